"""What an index directory already holds, and what a run has to add to it.

    state = read_state(IndexLayout("idx/"))
    with Listing.build("photos/") as listing:
        retry = shards_to_retry(layout, state, all_errors=False)   # shards holding transient error rows
        work = plan_work(listing, state, layout, shard_size=1024, prune=False, retry=retry)
        work.pending, work.missing, work.to_prune  # new shards, images gone from the dataset, shards to redo

Shards are immutable once their marker is written. A resumed run plans the same shards as the run it
continues (the image list is sorted and split the same way every time), so it only compares each marker
with the plan: no file is read. When the dataset changed, the ids of the indexed images are read from
the (small) images files, and the images no completed shard holds go into new shards numbered after the
existing ones. `--prune` drops the markers of the shards that hold images no longer in the dataset; their
remaining images are indexed again, in new shards, by the same run. No activation file is ever read.

Shards holding error rows to retry (`shards_to_retry`: transient failures that an earlier actindex recorded
as bad images, or every error row with --retry-errors) are indexed again: in place, under their own
number, when the dataset is unchanged (the new attempt's marker replaces the old one when it commits, so
readers never lose the images); otherwise like pruned shards, in new shards.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from actindex.pipeline.decode import stored_error_is_transient
from actindex.pipeline.layout import IndexLayout
from actindex.pipeline.listing import Listing
from actindex.pipeline.shards import Shard, iter_shards
from actindex.pipeline.sources import ImageRef


@dataclass
class IndexState:
    done: dict[int, dict]  # shard -> marker, for shards whose files are all present
    files: list = field(default_factory=list)  # the shard files present when it was read (data_dirs)
    broken: list = field(default_factory=list)  # markers whose files are gone (repair() deletes them)

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
    to_prune: list[int] = field(default_factory=list)  # completed shards dropped (--prune, or retried)
    reindexed: int = 0  # images of pruned shards that are still in the dataset: indexed again
    retried: int = 0  # images of shards indexed again for their error rows (shards_to_retry)
    retried_errors: int = 0  # the error rows among them that are retried
    retried_shards: int = 0  # completed shards indexed again in place, under their own number

    @property
    def images(self) -> int:
        """Images the pending shards hold."""
        return self.pending.images

    @property
    def new_images(self) -> int:
        """Images that no shard held before."""
        return self.images - self.reindexed - self.retried

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
    state = IndexState(done, files, broken)
    if repair:
        repair_markers(layout, state)
    return state


def repair_markers(layout: IndexLayout, state: IndexState) -> None:
    """Delete the markers whose files are gone, so that their images are indexed again."""
    layout.delete(state.broken)
    state.broken = []


def plan_work(
    refs: Listing,
    state: IndexState,
    layout: IndexLayout,
    shard_size: int,
    prune: bool,
    retry: dict[int, int] | None = None,
) -> Work:
    """What a run adds to the index. Planning makes no pass over the listing for a fresh run, one for a
    resumed run (the completed shards' digests), and for a changed dataset also reads every id and counts
    what is new in another; the shards themselves are made in one more pass, as they are handed out.
    `retry`: completed shards to index again, with their error rows to retry (shards_to_retry)."""
    retry = {shard: count for shard, count in (retry or {}).items() if shard in state.done}
    total = len(refs)
    planned = -(-total // shard_size)
    if all(shard < planned for shard in state.done) and _digests_match(refs, state.done, shard_size):
        skip = frozenset(state.done) - frozenset(retry)
        images = total - sum(min(shard_size, total - shard * shard_size) for shard in skip)
        retried = sum(state.done[shard]["images"] for shard in retry)
        pending = PendingShards(lambda: refs, shard_size, 0, skip, planned - len(skip), images)
        return Work(pending, retried=retried, retried_errors=sum(retry.values()), retried_shards=len(retry))
    indexed, shards = indexed_ids(layout, state)
    gone = ~np.isin(indexed, refs.ids(), assume_unique=True)
    missing = dict(zip(indexed[gone].tolist(), shards[gone].tolist(), strict=True))
    pruned = sorted(set(missing.values())) if prune else []
    to_prune = sorted(set(pruned) | set(retry))
    dropped = np.array(to_prune, np.int64)
    retried_shards = np.array(sorted(set(retry) - set(pruned)), np.int64)

    def marked() -> Iterator[tuple[ImageRef, int]]:
        """(image, 0 new / 1 in a pruned shard / 2 in a retried shard) for the images no completed shard
        holds, or only a dropped one."""
        for chunk in _chunks(refs, 8_192):
            ids = np.fromiter((ref.image_id for ref in chunk), np.int64, len(chunk))
            origin, keep = np.zeros(len(ids), np.int8), np.ones(len(ids), bool)
            if len(indexed):
                where = np.minimum(np.searchsorted(indexed, ids), len(indexed) - 1)
                known = indexed[where] == ids
                keep = ~known | np.isin(shards[where], dropped)
                origin = np.where(known, np.where(np.isin(shards[where], retried_shards), 2, 1), 0)
            yield from ((ref, int(o)) for ref, o, kept in zip(chunk, origin, keep, strict=True) if kept)

    counts = np.zeros(3, np.int64)
    for _, origin in marked():
        counts[origin] += 1
    count = int(counts.sum())
    new_refs = lambda: (ref for ref, _ in marked())  # noqa: E731
    shards_needed = -(-count // shard_size)
    pending = PendingShards(new_refs, shard_size, state.next_shard, frozenset(), shards_needed, count)
    errors = sum(count for shard, count in retry.items() if shard not in pruned)
    return Work(pending, missing, to_prune, int(counts[1]), int(counts[2]), errors)


def shards_to_retry(layout: IndexLayout, state: IndexState, all_errors: bool) -> dict[int, int]:
    """{completed shard: its error rows to retry}: with `all_errors` every error row (--retry-errors: files
    fixed since, a codec installed since, "unreadable after retries" rows); otherwise the transient failures
    an earlier actindex stored as bad images (pipeline.decode.stored_error_is_transient). Only the images
    files of shards whose markers count errors are read."""
    retry = {}
    for shard, marker in state.done.items():
        if marker["ok"] == marker["images"]:
            continue
        images = next(f for f in marker["files"] if f.startswith("images/"))
        errors = layout.read_table(layout.root / images, columns=["error"]).column("error").to_pylist()
        errors = [error for error in errors if error]
        count = len(errors) if all_errors else sum(map(stored_error_is_transient, errors))
        if count:
            retry[shard] = count
    return retry


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
