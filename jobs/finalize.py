"""The end of a run: the topk table (with boxes in original pixels) and the run's summary.

tops = {layer: RunningTopK(units, k)}      # filled while shards were written
reload_topk(layout, layer, shard, tops[layer], width)   # shards finished by an earlier run
rows = write_topk(layout, layers, tops, rfs, widths, preprocessing, metadata)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.preprocess import Preprocessing
from pipeline.receptive_field import ReceptiveField, boxes
from pipeline.topk import RunningTopK
from pipeline.writer import IndexLayout, write_parquet

BOX = ("x0", "y0", "x1", "y1")


def reload_topk(layout: IndexLayout, layer: str, shard: int, top: RunningTopK, width: int) -> None:
    """Fold a shard finished by an earlier run into `top`, from its activations file."""
    table = pq.read_table(
        layout.activations_file(layer, shard), columns=["image_id", "unit", "act", "y", "x"]
    )
    ids, inverse = np.unique(table.column("image_id").to_numpy(), return_inverse=True)
    units = table.column("unit").to_numpy()
    act = np.full((len(ids), top.values.shape[0]), np.nan, dtype=np.float32)
    pos = np.zeros(act.shape, dtype=np.int32)
    act[inverse, units] = table.column("act").to_numpy()
    pos[inverse, units] = table.column("y").to_numpy().astype(np.int32) * width + table.column("x").to_numpy()
    top.add(act, ids, pos)


def image_sizes(layout: IndexLayout, markers: dict[int, dict]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted image_ids, (N, 2) width/height) of every image of the given shards."""
    files = [layout.images_file(shard) for shard in markers]
    if not files:
        return np.empty(0, dtype=np.int64), np.empty((0, 2), dtype=np.int32)
    table = pa.concat_tables(pq.read_table(f, columns=["image_id", "width", "height"]) for f in files)
    order = np.argsort(table.column("image_id").to_numpy())
    sizes = np.stack([table.column("width").to_numpy(), table.column("height").to_numpy()], axis=1)
    return table.column("image_id").to_numpy()[order], sizes[order]


def topk_table(layer: str, top: RunningTopK, rf: ReceptiveField, width: int) -> pa.Table:
    """Top-k rows with boxes in model-input pixels (write_topk maps them to original pixels)."""
    valid = ~np.isnan(top.values)
    unit_idx, rank_idx = np.nonzero(valid)
    pos = top.positions[valid]
    y, x = pos // width, pos % width
    model_boxes = boxes(rf, y, x)
    columns = {
        "layer": pa.repeat(pa.scalar(layer), len(unit_idx)),
        "unit": unit_idx.astype(np.int32),
        "rank": (rank_idx + 1).astype(np.int32),
        "image_id": top.image_ids[valid],
        "act": top.values[valid],
        "y": y.astype(np.int16),
        "x": x.astype(np.int16),
    }
    columns.update({name: model_boxes[:, j].astype(np.int32) for j, name in enumerate(BOX)})
    return pa.table(columns, schema=schema.TOPK)


def to_original_boxes(
    table: pa.Table, prep: Preprocessing, ids_sorted: np.ndarray, sizes: np.ndarray
) -> pa.Table:
    rows = np.searchsorted(ids_sorted, table.column("image_id").to_numpy())
    model_boxes = np.stack([table.column(c).to_numpy() for c in BOX], axis=1)
    mapped = prep.to_original(model_boxes, sizes[rows, 0], sizes[rows, 1])
    for j, name in enumerate(BOX):
        table = table.set_column(
            table.schema.get_field_index(name), schema.TOPK.field(name), pa.array(mapped[:, j])
        )
    return table


def write_topk(
    layout: IndexLayout,
    markers: dict[int, dict],
    tops: dict[str, RunningTopK],
    rfs: dict[str, ReceptiveField],
    widths: dict[str, int],
    prep: Preprocessing,
    metadata: dict,
) -> int:
    ids_sorted, sizes = image_sizes(layout, markers)
    rows = 0
    for layer, top in tops.items():
        table = to_original_boxes(topk_table(layer, top, rfs[layer], widths[layer]), prep, ids_sorted, sizes)
        write_parquet(table, layout.topk_file(layer), metadata)
        rows += table.num_rows
    return rows
