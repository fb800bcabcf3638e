"""What an index directory already holds, and what a run has to add to it.

    state = read_state(IndexLayout("idx/"))
    work = plan_work(list_images("photos/"), state, layout, shard_size=1024, prune=False)
    work.pending, work.missing, work.to_prune     # new shards, images gone from the dataset, shards to redo

Shards are immutable once their marker is written. A resumed run plans the same shards as the run it
continues (the image list is sorted and split the same way every time), so it only compares each marker
with the plan: no file is read. When the dataset changed, the ids of the indexed images are read from
the (small) images files, and the images no completed shard holds go into new shards numbered after the
existing ones. `--prune` drops the markers of the shards that hold images no longer in the dataset; their
remaining images are indexed again, in new shards, by the same run. No activation file is ever read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.shards import Shard, plan_shards
from pipeline.sources import ImageRef
from pipeline.writer import IndexLayout


@dataclass
class IndexState:
    done: dict[int, dict]  # shard -> marker, for shards whose files are all present

    @property
    def next_shard(self) -> int:
        return max(self.done) + 1 if self.done else 0


@dataclass
class Work:
    pending: list[Shard]  # shards to compute, numbered after the completed ones
    missing: dict[int, int] = field(
        default_factory=dict
    )  # indexed image_id -> shard, no longer in the dataset
    to_prune: list[int] = field(default_factory=list)  # completed shards dropped by --prune
    reindexed: int = 0  # images of pruned shards that are still in the dataset: indexed again

    @property
    def images(self) -> int:
        """Images the pending shards hold."""
        return sum(len(shard.refs) for shard in self.pending)

    @property
    def new_images(self) -> int:
        """Images that no shard held before."""
        return self.images - self.reindexed

    @property
    def idle(self) -> bool:
        return not self.pending and not self.to_prune


def read_state(layout: IndexLayout, repair: bool = True) -> IndexState:
    """Completed shards. A marker whose files are gone is ignored, and with `repair` deleted, so that the
    next run indexes its images again."""
    done, broken = {}, []
    present = {str(path) for folder in layout.data_dirs() for path in layout.files(folder)}
    for shard, marker in layout.completed_shards().items():
        if all(str(layout.root / f) in present for f in marker["files"]):
            done[shard] = marker
        else:
            broken.append(layout.marker(shard))
    if repair:
        layout.delete(broken)
    return IndexState(done)


def plan_work(
    refs: list[ImageRef], state: IndexState, layout: IndexLayout, shard_size: int, prune: bool
) -> Work:
    planned = plan_shards(refs, shard_size)
    if all(s < len(planned) and planned[s].digest == m["digest"] for s, m in state.done.items()):
        return Work([shard for shard in planned if shard.index not in state.done])  # a fresh or resumed run
    indexed = indexed_ids(layout, state)
    current = {ref.image_id for ref in refs}
    missing = {image_id: shard for image_id, shard in indexed.items() if image_id not in current}
    to_prune = sorted(set(missing.values())) if prune else []
    dropped = set(to_prune)
    again = [ref for ref in refs if indexed.get(ref.image_id, -1) in dropped]
    new = [ref for ref in refs if ref.image_id not in indexed or indexed[ref.image_id] in dropped]
    return Work(plan_shards(new, shard_size, first_index=state.next_shard), missing, to_prune, len(again))


def indexed_ids(layout: IndexLayout, state: IndexState) -> dict[int, int]:
    """image_id -> the completed shard holding it, from the images files."""
    indexed = {}
    for shard, marker in state.done.items():
        images = next(f for f in marker["files"] if f.startswith("images/"))
        ids = layout.read_table(layout.root / images, columns=["image_id"]).column("image_id")
        indexed.update(dict.fromkeys(ids.to_pylist(), shard))
    return indexed


def apply_prune(layout: IndexLayout, state: IndexState, work: Work) -> None:
    """Drop the markers of the shards `work` prunes: their images leave every view now (never shown
    twice), and the shards that re-index the remaining ones bring them back when they commit. A run
    killed in between indexes them on its rerun, as they are in no completed shard."""
    layout.delete([layout.marker(shard) for shard in work.to_prune])
    for shard in work.to_prune:
        del state.done[shard]


def remove_orphans(layout: IndexLayout, state: IndexState) -> int:
    """Delete temporary files and shard files no marker lists (killed runs', lost attempts', pruned
    shards')."""
    keep = {str(layout.root / f) for marker in state.done.values() for f in marker["files"]}
    files = [path for folder in layout.data_dirs() for path in layout.files(folder)]
    if not layout.remote:  # files a killed run left under their temporary names
        files += [path for path in layout.files() if re.fullmatch(r"\..*\.tmp-.*", path.name)]
    orphans = sorted({path for path in files if str(path) not in keep}, key=str)
    layout.delete(orphans)
    return len(orphans)
