"""Query benchmark: a synthetic index with 100M+ activation rows in the job's real layout, and timings.

    index = build_synthetic_index(Path("qbench/"), rows=100_000_000)
    timings = time_queries(index)   # top-9 for one unit: from activations, from unsorted rows, from topk

The synthetic index is written by the job's own writer (sorted by unit then act, row groups with
statistics, the same encodings) plus, for comparison, the same rows shuffled into files of the same
row-group size; both are queried through DuckDB views like `actindex sql` uses.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actindex.jobs.finalize import write_topk
from actindex.jobs.spec import RunSpec
from actindex.jobs.worker import ShardFinisher, ShardTask, WorkContext
from actindex.pipeline import schema
from actindex.pipeline.geometry import LayerInfo, ReceptiveField
from actindex.pipeline.layout import (
    INDEX_FORMAT,
    ROWS_PER_GROUP,
    IndexLayout,
    atomic_write_json,
    commit_marker,
    write_parquet,
)
from actindex.pipeline.models import IMAGENET
from actindex.pipeline.shards import ids_digest
from actindex.pipeline.sources import ImageRef
from actindex.pipeline.topk import RunningTopK
from actindex.queries.db import connect
from actindex.queries.sql import sql_text

if TYPE_CHECKING:
    import duckdb


LAYER = "layer4"
UNITS = 2048  # resnet50 layer4
SHARD = 1024
INFO = LayerInfo(LAYER, "Sequential", UNITS, 7, 7)
RF = ReceptiveField(427, 427, 32, 32, -213, -213, False)  # resnet50 layer4 at 224


def synthetic_context(root: Path, k: int = 100) -> WorkContext:
    """A run of 'synthetic' ResNet-50 layer4 maxima: what the query benchmark and the finish benchmark
    hand to the job's own ShardFinisher."""
    spec = RunSpec(
        model="synthetic", weights="random", weights_sha256="0" * 64, layers=(LAYER,), preprocessing=IMAGENET,
        k=k, shard_size=SHARD, max_pixels=1, dataset_root="/synthetic", store="dense", device="cpu",
        precision="fp32", device_decode=False, batch_size=SHARD, compile=False,
    )  # fmt: skip
    return WorkContext(spec, str(root), {LAYER: INFO}, {LAYER: RF}, metadata=spec.params())


def synthetic_shard(rng: np.random.Generator, shard: int, ids: np.ndarray) -> tuple[ShardTask, dict, dict]:
    """(task, meta, {layer: (act, pos)}): one shard of 500x375 images with post-ReLU-like maxima."""
    refs = tuple(ImageRef(int(i), f"/synthetic/{i}.jpg", f"{i}.jpg") for i in ids)
    n = len(ids)
    meta = {
        "ok": np.ones(n, dtype=bool),
        "width": np.full(n, 500, dtype=np.int32),
        "height": np.full(n, 375, dtype=np.int32),
        "error": np.full(n, "", dtype=object),
    }
    return ShardTask(shard, ids_digest(ids.tolist()), refs), meta, {LAYER: _activations(rng, n)}


def build_synthetic_index(out: Path, rows: int, k: int = 100, seed: int = 0, echo=print) -> Path:
    """Write an index of ceil(rows / 2048) images x 2048 units, and an unsorted copy in out/unsorted."""
    layout = IndexLayout(out / "index")
    layout.clear()
    context = synthetic_context(layout.root, k)
    manifest = {"format": INDEX_FORMAT, "params": context.spec.params(), "source": "synthetic"}
    atomic_write_json(layout.manifest, {**manifest, "status": "complete"})
    finisher = ShardFinisher(context)
    rng = np.random.default_rng(seed)
    images = math.ceil(rows / UNITS)
    for shard, start in enumerate(range(0, images, SHARD)):
        ids = np.arange(start, min(start + SHARD, images), dtype=np.int64) * 7919 + 11
        result = finisher(*synthetic_shard(rng, shard, ids))
        commit_marker(layout, result.marker())
        written = next(f for f in result.files if f.startswith("activations/"))
        _write_unsorted(out / "unsorted" / f"shard-{shard:05d}.parquet", layout.root / written, rng)
        echo(f"  shard {shard}: {result.activation_rows:,} rows")
    write_parquet(_layers_table(), layout.layers, context.metadata)
    fresh = {LAYER: RunningTopK(UNITS, k)}  # filled from the shards' top-k partials
    write_topk(layout, layout.completed_shards(), fresh, set(), {LAYER: INFO}, context.metadata)
    return out


def _activations(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Post-ReLU-like maxima: a per-unit scale times a gamma draw, rounded like bf16-free fp32 sums."""
    scale = rng.uniform(0.5, 4.0, UNITS).astype(np.float32)
    act = (rng.gamma(2.0, 1.0, (count, UNITS)).astype(np.float32) * scale).astype(np.float32)
    return act, rng.integers(0, 49, (count, UNITS), dtype=np.int32)


def _layers_table() -> pa.Table:
    row = {"layer": LAYER, "type": "Sequential", "channels": UNITS, "height": 7, "width": 7}
    row |= {"rf_size_y": 427, "rf_size_x": 427, "rf_jump_y": 32, "rf_jump_x": 32}
    row |= {"rf_start_y": -213, "rf_start_x": -213, "rf_global": False, "rf_global_context": False}
    row |= IMAGENET.to_dict()
    return pa.Table.from_pylist([row], schema=schema.LAYERS)


def _write_unsorted(path: Path, written: Path, rng: np.random.Generator) -> None:
    table = pq.read_table(written)  # its layer is its directory's name: the unsorted copy carries it
    table = table.add_column(1, "layer", pa.array([LAYER] * table.num_rows, pa.string()))
    shuffled = table.take(rng.permutation(table.num_rows))
    write_parquet(shuffled, path, None, row_group_size=ROWS_PER_GROUP, use_byte_stream_split=["act"])


def _median_ms(con: duckdb.DuckDBPyConnection, sql: str, units: list[int], k: int) -> float:
    times = []
    for unit in units:
        start = time.perf_counter()
        rows = con.execute(sql, {"layer": LAYER, "unit": unit, "k": k}).fetchall()
        times.append((time.perf_counter() - start) * 1000)
        assert len(rows) == k, f"unit {unit}: {len(rows)} rows"
    return statistics.median(times)


def time_queries(out: Path, k: int = 9, samples: int = 15, seed: int = 1) -> dict:
    """Median milliseconds for the top-k of one unit (random units, each query run once after a warm-up)."""
    import duckdb

    units = np.random.default_rng(seed).integers(0, UNITS, samples).tolist()
    con = connect(out / "index")
    unsorted = duckdb.connect()
    unsorted.read_parquet(str(out / "unsorted" / "*.parquet")).create_view("activations")
    sorted_sql, topk_sql = sql_text("top_activations"), sql_text("top_from_topk")
    for connection, sql in ((con, sorted_sql), (unsorted, sorted_sql), (con, topk_sql)):
        _median_ms(connection, sql, units[:2], k)  # warm-up: file metadata, page cache
    result = {
        "rows": con.sql("SELECT count(*) FROM activations").fetchall()[0][0],
        "activations_sorted_ms": _median_ms(con, sorted_sql, units, k),
        "activations_unsorted_ms": _median_ms(unsorted, sorted_sql, units, k),
        "topk_ms": _median_ms(con, topk_sql, units, k),
        "bytes_sorted": sum(p.stat().st_size for p in (out / "index" / "activations").rglob("*.parquet")),
        "bytes_unsorted": sum(p.stat().st_size for p in (out / "unsorted").rglob("*.parquet")),
    }
    result["speedup_vs_unsorted"] = result["activations_unsorted_ms"] / result["activations_sorted_ms"]
    _check_same_answer(con, unsorted, sorted_sql, units[0], k)
    (out / "query_results.json").write_text(json.dumps(result, indent=2))
    return result


def _check_same_answer(con, unsorted, sql: str, unit: int, k: int) -> None:
    params = {"layer": LAYER, "unit": unit, "k": k}
    if con.execute(sql, params).fetchall() != unsorted.execute(sql, params).fetchall():
        raise AssertionError("sorted and unsorted activations disagree on the top-k: the benchmark is wrong")
