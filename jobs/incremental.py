"""What an index directory already holds, and what a run has to add to it.

    state = read_state(IndexLayout("idx/"))
    with Listing.build("photos/") as listing:
        work = plan_work(listing, state, layout, shard_size=1024, prune=False)
        work.pending, work.missing, work.to_prune  # new shards, images gone from the dataset, shards to redo

Shards are immutable once their marker is written. A resumed run plans the same shards as the run it
continues (the image list is sorted and split the same way every time), so it only compares each marker
with the plan: no file is read. When the dataset changed, the ids of the indexed images are read from
the (small) images files, and the images no completed shard holds go into new shards numbered after the
existing ones. `--prune` drops the markers of the shards that hold images no longer in the dataset; their
remaining images are indexed again, in new shards, by the same run. No activation file is ever read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from actindex.pipeline.listing import Listing
from actindex.pipeline.shards import Shard, iter_shards
from actindex.pipeline.sources import ImageRef
from actindex.pipeline.writer import IndexLayout


@dataclass
class IndexState:
    done: dict[int, dict]  # shard -> marker, for shards whose files are all present
    files: list = field(default_factory=list)  # the shard files present when it was read (data_dirs)

    @property
    def next_shard(self) -> int:
        return max(self.done) + 1 if self.done else 0


@dataclass
class PendingShards:
    """The shards a run computes. Iterating makes them one at a time from the images (again on each
    iteration), so a listing too large to hold is never held as shards either."""

    refs: Callable[[], Iterable[ImageRef]]  # the images to cut into shards, in order
    shard_size: int
    first_index: int = 0  # the first shard's number
    skip: frozenset[int] = frozenset()  # shards (by number) already complete
    count: int = 0  # shards to compute
    images: int = 0  # images they hold

    def __iter__(self) -> Iterator[Shard]:
        shards = iter_shards(self.refs(), self.shard_size, self.first_index)
        return (shard for shard in shards if shard.index not in self.skip)

    def __len__(self) -> int:
        return self.count


@dataclass
class Work:
    pending: PendingShards  # shards to compute, numbered after the completed ones
    missing: dict[int, int] = field(
        default_factory=dict
    )  # indexed image_id -> shard, no longer in the dataset
    to_prune: list[int] = field(default_factory=list)  # completed shards dropped by --prune
    reindexed: int = 0  # images of pruned shards that are still in the dataset: indexed again

    @property
    def images(self) -> int:
        """Images the pending shards hold."""
        return self.pending.images

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
    files = [path for folder in layout.data_dirs() for path in layout.files(folder)]
    present = {str(path) for path in files}
    for shard, marker in layout.completed_shards().items():
        if all(str(layout.root / f) in present for f in marker["files"]):
            done[shard] = marker
        else:
            broken.append(layout.marker(shard))
    if repair:
        layout.delete(broken)
    return IndexState(done, files)


def plan_work(refs: Listing, state: IndexState, layout: IndexLayout, shard_size: int, prune: bool) -> Work:
    """What a run adds to the index. Planning makes no pass over the listing for a fresh run, one for a
    resumed run (the completed shards' digests), and for a changed dataset also reads every id and counts
    what is new in another; the shards themselves are made in one more pass, as they are handed out."""
    total = len(refs)
    planned = -(-total // shard_size)
    if all(shard < planned for shard in state.done) and _digests_match(refs, state.done, shard_size):
        skip = frozenset(state.done)
        images = total - sum(min(shard_size, total - shard * shard_size) for shard in skip)
        return Work(PendingShards(lambda: refs, shard_size, 0, skip, planned - len(skip), images))
    indexed, shards = indexed_ids(layout, state)
    gone = ~np.isin(indexed, refs.ids(), assume_unique=True)
    missing = dict(zip(indexed[gone].tolist(), shards[gone].tolist(), strict=True))
    to_prune = sorted(set(missing.values())) if prune else []
    dropped = np.array(to_prune, np.int64)

    def marked() -> Iterator[tuple[ImageRef, bool]]:
        """(image, indexed before) for the images no completed shard holds, or only a dropped one."""
        for chunk in _chunks(refs, 8_192):
            ids = np.fromiter((ref.image_id for ref in chunk), np.int64, len(chunk))
            known, keep = np.zeros(len(ids), bool), np.ones(len(ids), bool)
            if len(indexed):
                where = np.minimum(np.searchsorted(indexed, ids), len(indexed) - 1)
                known = indexed[where] == ids
                keep = ~known | np.isin(shards[where], dropped)
            yield from ((ref, bool(k)) for ref, k, kept in zip(chunk, known, keep, strict=True) if kept)

    count = again = 0
    for _, before in marked():
        count, again = count + 1, again + before
    new_refs = lambda: (ref for ref, _ in marked())  # noqa: E731
    shards_needed = -(-count // shard_size)
    pending = PendingShards(new_refs, shard_size, state.next_shard, frozenset(), shards_needed, count)
    return Work(pending, missing, to_prune, again)


def _digests_match(refs, done: dict[int, dict], shard_size: int) -> bool:
    """Whether every completed shard holds exactly the images the plan puts in it."""
    if not done:
        return True
    last = max(done)
    for shard in iter_shards(refs, shard_size):
        if shard.index in done and shard.digest != done[shard.index]["digest"]:
            return False
        if shard.index >= last:
            return True
    return False


def _chunks(refs: Iterable[ImageRef], size: int) -> Iterator[list[ImageRef]]:
    chunk = []
    for ref in refs:
        chunk.append(ref)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def indexed_ids(layout: IndexLayout, state: IndexState) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, the completed shard holding each), sorted by id, from the images files."""
    ids, shards = [np.array([], np.int64)], [np.array([], np.int64)]
    for shard, marker in state.done.items():
        images = next(f for f in marker["files"] if f.startswith("images/"))
        column = layout.read_table(layout.root / images, columns=["image_id"]).column("image_id")
        ids.append(column.to_numpy())
        shards.append(np.full(len(column), shard, np.int64))
    ids, shards = np.concatenate(ids), np.concatenate(shards)
    order = np.argsort(ids, kind="stable")
    return ids[order], shards[order]


def apply_prune(layout: IndexLayout, state: IndexState, work: Work) -> None:
    """Drop the markers of the shards `work` prunes: their images leave every view now (never shown
    twice), and the shards that re-index the remaining ones bring them back when they commit. A run
    killed in between indexes them on its rerun, as they are in no completed shard."""
    layout.delete([layout.marker(shard) for shard in work.to_prune])
    for shard in work.to_prune:
        del state.done[shard]


def remove_orphans(layout: IndexLayout, state: IndexState) -> int:
    """Delete temporary files and shard files no marker lists (killed runs', lost attempts', pruned
    shards'), among the files `state` found when it was read (one listing serves both): a file that no
    marker listed then never will be, as only this job commits markers and every attempt has new names."""
    keep = {str(layout.root / f) for marker in state.done.values() for f in marker["files"]}
    files = list(state.files)
    if not layout.remote:  # files a killed run left under their temporary names
        files += [path for path in layout.files() if re.fullmatch(r"\..*\.tmp-.*", path.name)]
    orphans = sorted({path for path in files if str(path) not in keep}, key=str)
    layout.delete(orphans)
    return len(orphans)
