"""The topk table: merged from top-k lists only, never from activations.

    set_topk_aside(layout)                    # a run starts changing the index: readers see no topk
    rows = write_topk(layout, markers, fresh, infos, k, metadata)   # at the end of the run

Every shard stores its own top-k (`_topk/shard-NNNNN.<attempt>.parquet`, written with its files). The
topk table (`topk/layer=<name>/topk.parquet`) records which shards it merged in `_topk.json`, written
last. When a run changes the index, the table is copied to `_topk_base/` (with its record,
`_topk_base.json`, written last) and removed; at the end the new table is the old one merged
with the top-k lists this run computed (the driver folded them as shards finished) and those of shards
that neither holds (finished by a run that was killed). When the old table covers a shard that is gone
(pruned), it cannot be used, and every shard's top-k is merged again: still no activation file is read.
"""

from __future__ import annotations

from actindex.pipeline.geometry import LayerInfo
from actindex.pipeline.layout import IndexLayout, marker_id, topk_record, write_parquet
from actindex.pipeline.topk import RunningTopK, read_topk, topk_table


def set_topk_aside(layout: IndexLayout) -> None:
    """Copy a complete topk/ to _topk_base/ (its record last), then remove topk/ (its record first): readers
    see the old table or none, and a run killed at any step leaves a usable base or none. A table without
    its record (a run killed while writing it) is dropped. Copies, not renames: object stores have none."""
    shards = topk_record(layout, layout.topk_covers)
    if shards is not None:
        layout.delete([layout.topk_base_covers])  # first: a base without its record is never used
        layout.delete_tree(layout.topk_base)
        layout.copy_tree(layout.topk_dir, layout.topk_base)
        layout.put_json(layout.topk_base_covers, {"shards": sorted(shards)})
        layout.delete([layout.topk_covers])
    layout.delete_tree(layout.topk_dir)


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
    base = topk_record(layout, layout.topk_base_covers)
    if base is not None and base <= set(current):
        for layer, top in fresh.items():  # the last table is one more partial: a file per layer
            table = layout.read_table(layout.topk_file(layer, layout.topk_base))
            top.merge(read_topk(table, layer, infos[layer].channels, infos[layer].width))
        have |= base
    for key, marker in sorted(current.items()):
        if key not in have:
            table = layout.read_table(layout.root / _partial(marker))
            for layer, top in fresh.items():
                top.merge(read_topk(table, layer, infos[layer].channels, infos[layer].width))
    rows = 0
    for layer, top in fresh.items():
        table = topk_table(layer, top.result(), infos[layer].width).drop_columns(["layer"])
        write_parquet(table, layout.topk_file(layer), metadata, layout)
        rows += table.num_rows
    layout.put_json(layout.topk_covers, {"shards": sorted(current)})
    layout.delete([layout.topk_base_covers])  # first: a base without its record is never used
    layout.delete_tree(layout.topk_base)
    return rows


def _partial(marker: dict) -> str:
    return next(f for f in marker["files"] if f.startswith("_topk/"))
