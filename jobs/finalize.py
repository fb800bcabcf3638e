"""The topk table: merged from top-k lists only, never from activations.

    set_topk_aside(layout)                    # a run starts changing the index: readers see no topk
    rows = write_topk(layout, markers, fresh, infos, k, metadata)   # at the end of the run

Every shard stores its own top-k (`_topk/shard-NNNNN.<attempt>.parquet`, written with its files). The
topk table (`topk/layer=<name>/topk.parquet`) records which shards it merged in `_topk.json`, written
last. When a run changes the index, the table is moved to `_topk_base/` (its record first, to
`_topk_base.json`); at the end the new table is the old one merged
with the top-k lists this run computed (the driver folded them as shards finished) and those of shards
that neither holds (finished by a run that was killed). When the old table covers a shard that is gone
(pruned), it cannot be used, and every shard's top-k is merged again: still no activation file is read.
"""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq

from pipeline.geometry import LayerInfo
from pipeline.topk import RunningTopK, read_topk, topk_table
from pipeline.writer import IndexLayout, atomic_write_json, marker_id, write_parquet


def topk_is_current(layout: IndexLayout, markers: dict[int, dict]) -> bool:
    """Whether topk/ holds exactly the merge of the completed shards' top-k lists."""
    shards = {marker_id(m) for m in markers.values()}
    return layout.topk_dir.is_dir() and _covers(layout.topk_covers) == shards


def set_topk_aside(layout: IndexLayout) -> None:
    """Move a complete topk/ to _topk_base/ (its record first, then the folder in one rename: readers see
    the old table or none); an incomplete one (a run killed while writing it) is dropped."""
    record, base = layout.topk_base_covers, layout.topk_base
    if (
        record.is_file()
        and not base.is_dir()
        and layout.topk_dir.is_dir()
        and not layout.topk_covers.is_file()
    ):
        layout.topk_dir.rename(base)  # a run was killed between the two renames below
        return
    if not layout.topk_dir.is_dir():
        layout.topk_covers.unlink(missing_ok=True)
        return
    if _covers(layout.topk_covers) is None:
        shutil.rmtree(layout.topk_dir)
        return
    shutil.rmtree(layout.topk_base, ignore_errors=True)
    os.replace(layout.topk_covers, layout.topk_base_covers)
    layout.topk_dir.rename(layout.topk_base)


def write_topk(
    layout: IndexLayout,
    markers: dict[int, dict],
    fresh: dict[str, RunningTopK],
    fresh_ids: set[str],
    infos: dict[str, LayerInfo],
    metadata: dict,
) -> int:
    """Write topk/ for the completed shards `markers`; `fresh` already holds the top-k lists of the
    shards named `fresh_ids`. Returns the table's rows."""
    set_topk_aside(layout)
    current = {marker_id(m): m for m in markers.values()}
    have = set(fresh_ids) & set(current)
    base = _covers(layout.topk_base_covers) if layout.topk_base.is_dir() else None
    if base is not None and base <= set(current):
        for layer, top in fresh.items():  # the last table is one more partial: a file per layer
            path = layout.topk_file(layer, layout.topk_base)
            top.merge(read_topk(pq.read_table(path), layer, infos[layer].channels, infos[layer].width))
        have |= base
    for key, marker in sorted(current.items()):
        if key not in have:
            table = pq.read_table(layout.root / _partial(marker))
            for layer, top in fresh.items():
                top.merge(read_topk(table, layer, infos[layer].channels, infos[layer].width))
    rows = 0
    for layer, top in fresh.items():
        table = topk_table(layer, top.result(), infos[layer].width).drop_columns(["layer"])
        write_parquet(table, layout.topk_file(layer), metadata)
        rows += table.num_rows
    atomic_write_json(layout.topk_covers, {"shards": sorted(current)})
    layout.topk_base_covers.unlink(missing_ok=True)  # first: a base without its record is never used
    shutil.rmtree(layout.topk_base, ignore_errors=True)
    return rows


def _partial(marker: dict) -> str:
    return next(f for f in marker["files"] if f.startswith("_topk/"))


def _covers(path) -> set[str] | None:
    return set(json.loads(path.read_text())["shards"]) if path.is_file() else None
