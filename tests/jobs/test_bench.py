"""`actindex bench` and the query benchmark run end to end at tiny sizes and report consistent figures
(speed itself is never asserted)."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from actindex.jobs.benchmark import BenchConfig, run_bench, table_rows
from actindex.jobs.cli import app
from actindex.jobs.query_bench import UNITS, build_synthetic_index, time_queries
from actindex.pipeline.synthetic import synthetic_jpeg, synthetic_photo


def test_synthetic_photos_are_deterministic_natural_jpegs():
    assert synthetic_jpeg(3) == synthetic_jpeg(3) != synthetic_jpeg(4)
    photo = synthetic_photo(3)
    assert photo.size == (500, 375)
    pixels = {tuple(p) for p in np.asarray(photo.resize((50, 37))).reshape(-1, 3)}
    assert len(set(pixels)) > 500  # varied content, not a flat image


def test_bench_measures_every_stage_and_the_size_per_column(tmp_path):
    config = BenchConfig(
        out=str(tmp_path),
        model="resnet18",
        weights="random",
        layers=("layer3", "layer4"),
        images=6,
        batch_size=4,
        executors=("local", "plain"),
        finish_shard=16,
        extra_args=("--resize", "40", "--crop", "32"),
    )
    results = run_bench(config, echo=lambda s: None)
    assert results["images"] == 6 and results["layers"] == ["layer3", "layer4"]
    assert results["decode_images_per_second"] > 0 and results["forward_images_per_second"] > 0
    assert results["device_decode"] == "cpu" and results["device_decode_images_per_second"] > 0
    finish = results["finish"]
    assert finish["rows_per_shard"] == 16 * (256 + 512)
    assert all(finish[key] > 0 for key in ("rows_per_cpu_second", "rows_per_second_1", "rows_per_second_4"))
    for executor in ("local", "plain"):
        run = results[f"end_to_end_{executor}"]
        assert run["images"] == 6 and run["peak_rss_mib"] > 50 and run["cpu_seconds"] > 0
        assert run["wall_seconds"] > 0
    plain = list((tmp_path / "index_plain").glob("*.parquet"))
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in plain) == 6 * (256 + 512)  # the same work
    size = results["size"]
    assert size["rows"] == 6 * (256 + 512)
    files = list((tmp_path / "index_local" / "activations").rglob("*.parquet"))
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == size["rows"]
    assert sum(size["columns"].values()) < size["bytes_per_row"]  # columns + footers = file bytes
    assert "BYTE_STREAM_SPLIT" in size["encodings"]["act"]
    assert json.loads((tmp_path / "results.json").read_text())["size"]["rows"] == size["rows"]
    measures = [measure for measure, _ in table_rows(results)]
    assert any(m.startswith("end to end, plain loop (6 images, whole process)") for m in measures)
    assert any(m.startswith("finish shards (12,288 rows each") for m in measures)


def test_query_bench_index_is_a_real_index_with_sorted_and_unsorted_copies(tmp_path):
    build_synthetic_index(tmp_path, rows=3 * UNITS * 50, echo=lambda s: None)
    timings = time_queries(tmp_path, samples=3)  # also checks sorted and unsorted give the same top-k
    assert timings["rows"] == 150 * UNITS
    con = duckdb.connect()
    files = str(tmp_path / "index" / "activations" / "*" / "*.parquet")
    first_units = con.sql(f"SELECT unit, act FROM read_parquet('{files}') LIMIT 3").fetchall()
    assert [u for u, _ in first_units] == [0, 0, 0] and first_units[0][1] >= first_units[1][1]
    topk = con.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/index/topk/*/*.parquet')").fetchall()[0][0]
    assert topk == UNITS * 100


def test_bench_cli_queries_only(tmp_path):
    result = CliRunner().invoke(
        app, ["bench", "--out", str(tmp_path), "--no-stages", "--query", "--query-rows", str(UNITS * 40)]
    )
    assert result.exit_code == 0, result.output
    assert "top-9 of one unit from topk" in result.output and "unsorted" in result.output
