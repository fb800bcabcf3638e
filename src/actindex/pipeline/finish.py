"""Finish a shard where it was computed: order each unit's images, build the activations table, take the
shard's own top-k.

    ordered = order_units(act, pos, image_ids)           # act, pos (N, U) of the shard's ok images
    table = activations_table(ordered, width=7)          # rows by unit, then act desc, then image_id
    top = ordered.top(k, boxes_for)                      # the shard's top-k partial (pipeline.topk.TopK)

Ordering is one integer sort per unit: each activation becomes a 32-bit key that sorts in descending
float order (NaN last, -0.0 equal to 0.0), shifted left by 31 bits and or-ed with the image's rank by
image_id, so ties fall to the smaller image_id without a second pass. numpy sorts int64 rows with a
vectorized sort: about 25 ns per row on one core, a quarter of what encoding costs.

The table is built from dictionary arrays (image ids, units, positions), so the Parquet writer stores the
dictionaries as they are instead of hashing millions of values; the files are written without the Arrow
schema, so every reader sees the plain types of `pipeline.schema.in_files("activations")` (the layer is the
name of the file's directory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from actindex.pipeline import schema
from actindex.pipeline.topk import TopK, descending_keys

_LOW31 = np.int64(0x7FFF_FFFF)


@dataclass
class OrderedUnits:
    """One layer of one shard, ranked per unit: column j of row u is unit u's (j+1)-th best image."""

    ids: np.ndarray  # (N,) int64 image ids, ascending
    index: np.ndarray  # (U, N) int32: the image of each slot, as an index into `ids`
    act: np.ndarray  # (U, N) float32, descending along each row
    pos: np.ndarray  # (U, N) int32 flat peak positions y * width + x

    @property
    def rows(self) -> int:
        return self.index.size

    def top(self, k: int, boxes_for: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> TopK:
        """The first k slots of every unit as a TopK; `boxes_for(index, pos)` gives the (U, k, 4) boxes of
        the images `ids[index]` peaking at `pos`."""
        index, pos = self.index[:, :k], self.pos[:, :k]
        beyond = None
        if self.act.shape[1] > k:  # images equal to the k-th that the list leaves out (act is sorted)
            last, rest = self.act[:, k - 1 : k], self.act[:, k:]
            beyond = ((rest == last) | (np.isnan(rest) & np.isnan(last))).sum(axis=1).astype(np.int64)
        return TopK(self.act[:, :k], self.ids[index], pos, boxes_for(index, pos), beyond)


def order_units(act: np.ndarray, pos: np.ndarray, image_ids: np.ndarray) -> OrderedUnits:
    """Rank every unit's images: act descending, then image_id ascending. act, pos (N, U); ids (N,)."""
    by_id = np.argsort(image_ids, kind="stable")
    ids = np.asarray(image_ids, dtype=np.int64)[by_id]
    act_u = np.ascontiguousarray(np.asarray(act, dtype=np.float32)[by_id].T)  # (U, N), columns by id
    pos_u = np.ascontiguousarray(np.asarray(pos, dtype=np.int32)[by_id].T)
    keys = descending_keys(act_u) << 31
    keys |= np.arange(len(ids), dtype=np.int64)
    keys.sort(axis=1)
    index = (keys & _LOW31).astype(np.int32)
    return OrderedUnits(
        ids, index, np.take_along_axis(act_u, index, axis=1), np.take_along_axis(pos_u, index, axis=1)
    )


def activations_table(ordered: OrderedUnits, width: int) -> pa.Table:
    """Long-format rows of one layer (the columns of schema.in_files("activations")), in the order
    `ordered` ranks them."""
    units, images = ordered.index.shape
    pos = ordered.pos.ravel()
    columns = [
        _dictionary(ordered.index.ravel(), pa.array(ordered.ids)),
        _dictionary(
            np.repeat(np.arange(units, dtype=np.int32), images), pa.array(np.arange(units, dtype=np.int32))
        ),
        pa.array(ordered.act.ravel()),
        _dictionary(pos // max(width, 1), _positions(pos.max(initial=0) // max(width, 1) + 1)),
        _dictionary(pos % max(width, 1), _positions(width)),
    ]
    return pa.Table.from_arrays(columns, schema=_DICTIONARY_SCHEMA)


def _dictionary(indices: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32, copy=False)), dictionary)


def _positions(count: int) -> pa.Array:
    return pa.array(np.arange(count, dtype=np.int16))


def _dictionary_field(field: pa.Field) -> pa.Field:
    if field.name == "act":
        return field
    return pa.field(field.name, pa.dictionary(pa.int32(), field.type), nullable=False)


# What activations_table builds: the schema's columns, dictionary-encoded except `act`.
_DICTIONARY_SCHEMA = pa.schema([_dictionary_field(field) for field in schema.in_files("activations")])
