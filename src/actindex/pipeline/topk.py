"""Per-unit top-k lists, mergeable across shards, workers and runs.

    top = RunningTopK(units=512, k=100)
    top.add(act, image_ids, pos)     # a batch: act (B, U) float32, image_ids (B,), pos (B, U) int32
    top.merge(shard_top)             # a TopK from another shard (pipeline.finish computes them)
    best = top.result()              # TopK: (U, <=k) arrays, best first
    table = topk_table("layer4", best, width=7)      # rows of the topk schema; read_topk reverses it

Order is act descending, then image_id ascending, so ties resolve the same way on every run and merging
partials in any order gives the same lists; NaN sorts last. A TopK also carries each entry's box (x0, y0,
x1, y1 in original-image pixels), so merged lists need nothing but themselves to become the topk table.

Ties stay countable through merges: a TopK records per unit how many images with its last value it left
out (`beyond`). Merging lists of disjoint image sets adds them up: an image left out of a full list is
never better than that list's last entry, so only the lists whose last value is the merged list's last
value can hold left-out images equal to it. The topk table's `ties` column is then, for every row, the
number of images of the whole index with exactly that act.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actindex.pipeline import schema
from actindex.pipeline.options import Option

# images kept per unit: the --k of `actindex index` (the topk table) and of the commands that read an index
K = Option("How many top images per unit.", flags=("--k", "-k"), min=1, unit="image per unit")

_LOW31 = np.int64(0x7FFF_FFFF)
_NAN_KEY = np.int64(0xFFFF_FFFF)  # after every number


def descending_keys(act: np.ndarray) -> np.ndarray:
    """int64 keys in [0, 2**32) that sort ascending as `act` sorts descending; NaN last, -0.0 == 0.0."""
    act = np.asarray(act, dtype=np.float32)
    negated = np.add(act, np.float32(0.0))  # -0.0 + 0.0 is +0.0: every zero negates to -0.0 below
    np.negative(negated, out=negated)
    bits = negated.view(np.int32)
    bits ^= (bits >> 31) & np.int32(0x7FFF_FFFF)  # now the integers sort as the floats do
    keys = bits.astype(np.int64)
    keys += np.int64(2**31)
    nan = np.isnan(act)
    if nan.any():
        keys[nan] = _NAN_KEY
    return keys


@dataclass
class TopK:
    """Best-first lists per unit; every array has shape (U, n) (boxes (U, n, 4)), n <= k."""

    values: np.ndarray  # float32 activations
    image_ids: np.ndarray  # int64
    positions: np.ndarray  # int32 flat peak positions y * width + x
    boxes: np.ndarray  # int32 receptive-field boxes of the peaks in original pixels
    beyond: np.ndarray | None = None  # (U,) int64: images equal to the last value that the list left out

    def __post_init__(self):
        if self.beyond is None:
            self.beyond = np.zeros(self.values.shape[0], dtype=np.int64)

    @classmethod
    def empty(cls, units: int) -> TopK:
        return cls(
            np.empty((units, 0), dtype=np.float32),
            np.empty((units, 0), dtype=np.int64),
            np.empty((units, 0), dtype=np.int32),
            np.empty((units, 0, 4), dtype=np.int32),
        )

    @property
    def units(self) -> int:
        return self.values.shape[0]

    def ties(self) -> np.ndarray:
        """(U, n) int64: for every entry, the images of the covered set whose act equals its act."""
        keys = descending_keys(self.values)
        units, n = keys.shape
        if n == 0:
            return np.zeros((units, 0), dtype=np.int64)
        starts = np.ones((units, n), dtype=bool)
        starts[:, 1:] = keys[:, 1:] != keys[:, :-1]  # best first: equal values are adjacent
        group = np.cumsum(starts, axis=1) + np.arange(units)[:, None] * (n + 1)
        ties = np.bincount(group.ravel(), minlength=units * (n + 1))[group]
        return ties + (keys == keys[:, -1:]) * self.beyond[:, None]


class RunningTopK:
    def __init__(self, units: int, k: int):
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        self.k = k
        self.top = TopK.empty(units)

    def add(self, act: np.ndarray, image_ids: np.ndarray, positions: np.ndarray) -> None:
        """Fold in one batch: act and positions are (B, U), image_ids (B,); boxes are left zero."""
        ids = np.broadcast_to(np.asarray(image_ids, dtype=np.int64)[:, None], act.shape)
        boxes = np.zeros((*act.T.shape, 4), dtype=np.int32)
        self.merge(TopK(act.T, ids.T, positions.T, boxes))

    def merge(self, other: TopK | RunningTopK) -> None:
        other = other.top if isinstance(other, RunningTopK) else other
        if other.values.shape[1] == 0:
            return
        top = self.top
        if top.values.shape[1] == self.k and other.values.shape[1] <= self.k:
            # a full list changes only in the units where the other list's best is not worse than its
            # worst (NaN compares false: such units are merged too)
            changed = np.flatnonzero(~(other.values.max(axis=1, initial=-np.inf) < top.values[:, -1]))
            if len(changed) < top.units:
                merged = _merge(_rows(top, changed), _rows(other, changed), self.k)
                for name in ("values", "image_ids", "positions", "boxes", "beyond"):
                    getattr(top, name)[changed] = getattr(merged, name)
                return
        self.top = _merge(top, other, self.k)

    def result(self) -> TopK:
        return self.top

    # the lists so far, as (U, n) arrays
    values = property(lambda self: self.top.values)
    image_ids = property(lambda self: self.top.image_ids)
    positions = property(lambda self: self.top.positions)
    boxes = property(lambda self: self.top.boxes)


def _rows(top: TopK, rows: np.ndarray) -> TopK:
    return TopK(top.values[rows], top.image_ids[rows], top.positions[rows], top.boxes[rows], top.beyond[rows])


def _merge(a: TopK, b: TopK, k: int) -> TopK:
    values = np.concatenate([a.values, b.values.astype(np.float32, copy=False)], axis=1)
    ids = np.concatenate([a.image_ids, b.image_ids.astype(np.int64, copy=False)], axis=1)
    keys = descending_keys(values)
    order = best_first(values, ids, k, keys)
    positions = np.concatenate([a.positions, b.positions.astype(np.int32, copy=False)], axis=1)
    boxes = np.concatenate([a.boxes, b.boxes.astype(np.int32, copy=False)], axis=1)
    return TopK(
        np.take_along_axis(values, order, axis=1),
        np.take_along_axis(ids, order, axis=1),
        np.take_along_axis(positions, order, axis=1),
        np.take_along_axis(boxes, order[:, :, None], axis=1),
        _left_out(keys, np.take_along_axis(keys, order, axis=1), (a, b)),
    )


def _left_out(keys: np.ndarray, kept: np.ndarray, sources: tuple[TopK, ...]) -> np.ndarray:
    """(U,) images equal to the last kept value that the merged list leaves out: entries of all the
    sources (`keys`, descending_keys of their values) not kept, plus what the sources themselves had left
    out of that value. `kept`: the keys of the merged list."""
    if kept.shape[1] == 0:
        return np.zeros(kept.shape[0], dtype=np.int64)
    last = kept[:, -1:]
    beyond = (keys == last).sum(axis=1) - (kept == last).sum(axis=1)
    for source in sources:
        if source.values.shape[1]:
            beyond += np.where(descending_keys(source.values[:, -1:])[:, 0] == last[:, 0], source.beyond, 0)
    return beyond.astype(np.int64)


def best_first(values: np.ndarray, ids: np.ndarray, k: int, keys: np.ndarray | None = None) -> np.ndarray:
    """(U, min(k, n)) column indices of the k best per row of (U, n) values: act descending, then
    image_id ascending, NaN last. One int64 sort of (act key, column) per row; the rows where two of the
    first k + 1 acts tie (so the image ids decide) are sorted again by (act, image_id). `keys`:
    descending_keys(values), when the caller has them."""
    n = values.shape[1]
    keys = (descending_keys(values) if keys is None else keys) << 31
    keys |= np.arange(n, dtype=np.int64)
    keys.sort(axis=1)
    order = keys[:, :k] & _LOW31
    head = keys[:, : min(k + 1, n)] >> 31
    tied = np.flatnonzero((head[:, 1:] == head[:, :-1]).any(axis=1))
    if len(tied):
        # lexsort's last key is primary: -act (NaN stays last, -0.0 equals 0.0), then image_id.
        order[tied] = np.lexsort((ids[tied], -values[tied]), axis=1)[:, :k]
    return order


def topk_table(layer: str, top: TopK, width: int) -> pa.Table:
    units, count = top.values.shape
    columns = {
        "layer": pa.repeat(pa.scalar(layer), units * count),
        "unit": np.repeat(np.arange(units, dtype=np.int32), count),
        "rank": np.tile(np.arange(1, count + 1, dtype=np.int32), units),
        "image_id": top.image_ids.ravel(),
        "act": top.values.ravel(),
        "y": (top.positions.ravel() // width).astype(np.int16),
        "x": (top.positions.ravel() % width).astype(np.int16),
    }
    for j, name in enumerate(("x0", "y0", "x1", "y1")):
        columns[name] = top.boxes[:, :, j].ravel()
    columns["ties"] = top.ties().ravel()
    return pa.table(columns).cast(schema.TOPK)


def read_topk(table: pa.Table, layer: str, units: int, width: int) -> TopK:
    """The TopK of one layer from rows of the topk schema: a partial (every layer), or the file of the
    layer's topk partition (no `layer` column)."""
    rows = table.filter(pc.equal(table.column("layer"), layer)) if "layer" in table.column_names else table
    order = np.lexsort((rows.column("rank").to_numpy(), rows.column("unit").to_numpy()))
    count = len(order) // units if units else 0
    if count * units != len(order):
        raise ValueError(f"top-k rows of {layer!r} are not {units} units x {count}: the file is damaged")

    def column(name: str, dtype) -> np.ndarray:
        return rows.column(name).to_numpy().astype(dtype)[order].reshape(units, count)

    positions = column("y", np.int32) * width + column("x", np.int32)
    box = np.stack([column(name, np.int32) for name in ("x0", "y0", "x1", "y1")], axis=2)
    top = TopK(column("act", np.float32), column("image_id", np.int64), positions, box)
    if count:
        ties = column("ties", np.int64)
        top.beyond = ties[:, -1] - (descending_keys(top.values) == descending_keys(top.values[:, -1:])).sum(1)
    return top
