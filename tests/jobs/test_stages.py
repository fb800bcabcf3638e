"""The worker's stages: results never depend on how decoding and finishing share the host (fixed extreme
splits and an adapting one give the same bits), run.json records the forward's torch threads and a resume
keeps them, run.json and the summary line say each stage's rate, the split and which stage held the run,
and `bench --host` measures the host's ceiling (its figures are never asserted, only their presence)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actindex.jobs import local, spec, worker
from actindex.jobs.benchmark import BenchConfig, host_rows, run_host_bench
from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.jobs.stages import STAGES, WAITS, StageClock, StageSplit, StageTotals, summary_line
from actindex.pipeline.layout import IndexLayout
from actindex.pipeline.preprocess import Preprocessing
from tests.conftest import natural_image
from tests.jobs.test_cli import invoke
from tests.tables import assert_same_tables

PREP = Preprocessing(resize=36, crop=32, decode="torchvision")


@pytest.fixture(autouse=True)
def torch_threads():
    """A job sets the forward's torch threads in the thread that runs it; this process gets its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_images(folder: Path, count: int, first: int = 0) -> Path:
    """JPEGs (decoded by the C++ decoder with --decode torchvision) and a PNG in every fourth (Pillow)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + count):
        image = natural_image(i, 48 + i % 5, 40 + i % 3)
        image.save(folder / f"img{i:03d}.{'png' if i % 4 == 3 else 'jpg'}")
    return folder


def request(source: Path, out: Path, **kwargs) -> IndexRequest:
    options = dict(
        source=str(source),
        out=str(out),
        model="resnet18",
        weights="random",
        layers=("layer2", "layer4"),
        k=3,
        shard_size=4,
        batch_size=2,
        preprocessing=PREP,
        executor="local",
        progress=False,
    )
    return IndexRequest(**{**options, **kwargs})


def cores(monkeypatch, count: int) -> None:
    """The cores the rule sees (jobs.spec.available_cores), wherever it is asked."""
    for module in (spec, local, worker):
        monkeypatch.setattr(module, "available_cores", lambda: count)


def test_tables_are_identical_whatever_the_decode_and_finish_split(tmp_path, monkeypatch):
    source = make_images(tmp_path / "images", 14)
    fixed = {"one": (1, 1), "many": (4, 4)}
    for name, (decode, finish) in fixed.items():
        run_index(
            request(source, tmp_path / name, model_threads=1, decode_threads=decode, finish_threads=finish)
        )
    # adapted, and made to move: 4 cores, a decision every batch, any wait counts (it changes mid-shard)
    cores(monkeypatch, 4)
    monkeypatch.setattr(StageSplit, "WINDOW", 1)
    monkeypatch.setattr(StageSplit, "STARVED", 0.0)
    moves, update = [], StageSplit.update
    monkeypatch.setattr(
        StageSplit, "update", lambda split, clock: moves.append(update(split, clock)) or moves[-1]
    )
    summary = run_index(request(source, tmp_path / "adapted", model_threads=1))
    assert summary.indexed == 14 and any(moves)
    for name in fixed:
        assert_same_tables(tmp_path / name, tmp_path / "adapted")
    one = IndexLayout(tmp_path / "one").read_manifest()["stages"]
    assert one["decode"]["threads"] == {"start": 1, "final": 1} == one["finish"]["threads"]
    many = IndexLayout(tmp_path / "many").read_manifest()["stages"]
    assert many["decode"]["threads"] == {"start": 4, "final": 4} == many["finish"]["threads"]


def test_run_json_records_the_torch_threads_and_a_resume_keeps_them(tmp_path, monkeypatch):
    source = make_images(tmp_path / "images", 6)
    cores(monkeypatch, 3)
    run_index(request(source, tmp_path / "index"))
    layout = IndexLayout(tmp_path / "index")
    assert layout.read_manifest()["params"]["model_threads"] == 3  # the rule: every core on a CPU
    make_images(source, 4, first=6)
    cores(monkeypatch, 1)  # the rule would now say 1: the index keeps what it was computed with
    summary = run_index(request(source, tmp_path / "index"))
    assert summary.new_images == 4
    manifest = layout.read_manifest()
    assert manifest["params"]["model_threads"] == 3
    assert manifest["stages"]["model"]["threads"] == 3


def test_run_json_and_the_summary_line_say_each_stage_s_rate_the_split_and_what_held_the_run(tmp_path):
    source = make_images(tmp_path / "images", 8)
    out = tmp_path / "index"
    args = ["index", source, "--out", out, "--model", "resnet18", "--weights", "random"]
    args += ["--layers", "layer4", "--shard-size", "4", "--batch-size", "2", "--resize", "36", "--crop", "32"]
    result = invoke(*args, "--executor", "local", "--no-progress", "--model-threads", "1")
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert stages["workers"] == 1 and stages["held_by"] in STAGES
    for stage in STAGES:
        record = stages[stage]
        assert record["images"] == 8
        assert isinstance(record["images_per_second"], float) and record["images_per_second"] > 0
        assert record["busy_seconds"] > 0
    assert stages["model"]["threads"] == 1
    for stage in ("decode", "finish"):
        assert set(stages[stage]["threads"]) == {"start", "final"} and stages[stage]["threads"]["final"] >= 1
    assert set(stages["waits_seconds"]) == set(WAITS)
    assert stages["images_per_second"] > 0 and stages["window_seconds"] > 0
    line = next(line for line in result.output.splitlines() if line.startswith("stages"))
    assert line == summary_line(stages)
    for words in (
        "decode",
        "model",
        "finish",
        "per thread x",
        "torch thread",
        f"held by {stages['held_by']}",
    ):
        assert words in line


def test_the_split_gives_a_thread_to_the_stage_the_model_waits_for(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("actindex.jobs.stages.time.perf_counter", lambda: now[0])
    clock, split = StageClock(), StageSplit(cores=4)
    assert (split.decode, split.finish) == (2, 2)

    def window(decode_wait: float, shard_wait: float) -> None:
        clock.wait("model_for_decode", decode_wait)
        clock.wait("model_for_shard", shard_wait)
        now[0] += 1.0  # each window lasts a second
        for _ in range(StageSplit.WINDOW):
            split.update(clock)

    window(0.5, 0.0)  # the model waited half the window for decoded batches
    assert (split.decode, split.finish) == (3, 1)
    window(0.5, 0.0)
    assert (split.decode, split.finish) == (4, 1)  # decode takes every core; finishing keeps one
    window(0.5, 0.0)
    assert split.decode == 4  # at most the cores
    window(0.01, 0.0)  # under STARVED of the window: noise, nothing moves
    assert split.decode == 4
    window(0.0, 0.6)  # now it waits for shards (their slots are being finished)
    assert (split.decode, split.finish) == (3, 1)
    window(0.0, 0.6)
    assert (split.decode, split.finish) == (2, 2)
    assert split.threads() == {"decode": [2, 2], "finish": [2, 2]}
    pinned = StageSplit(cores=4, decode=1)  # --decode-threads: nothing moves
    for _ in range(3 * StageSplit.WINDOW):
        pinned.update(clock)
    assert (pinned.decode, pinned.finish, pinned.fixed) == (1, 3, True)


def test_the_window_rate_leaves_out_start_up():
    totals = StageTotals()
    shard = {
        "images": dict.fromkeys(STAGES, 4),
        "seconds": dict.fromkeys(STAGES, 0.5),
        "waits": dict.fromkeys(WAITS, 0.0),
        "worker": "host:1",
        "threads": {"decode": [1, 1], "finish": [1, 1]},
        "model_threads": 2,
        "shard_images": 4,
    }
    totals.add({**shard, "first_batch": [100.0, 2], "written": 101.0})
    totals.add({**shard, "first_batch": [100.5, 2], "written": 102.0})
    record = totals.record()
    assert record["window_seconds"] == 2.0  # from the first batch out of the model to the last shard written
    assert record["images_per_second"] == 3.0  # the 6 images after the first batch
    assert record["decode"]["images_per_second"] == 8.0 and record["model"]["threads"] == 2
    assert StageTotals().record() is None  # no shard computed: nothing to record


def test_bench_host_measures_the_job_against_the_one_core_decode_rate(tmp_path):
    config = BenchConfig(
        out=str(tmp_path), host=True, images=8, batch_size=2, executors=("local",),
        extra_args=("--decode", "torchvision"),
    )  # fmt: skip
    results = run_host_bench(config, echo=lambda s: None)
    assert results["images"] == 8 and results["cores"] >= 1
    assert results["decode_one_core"] > 0 and results["pillow_loop_one_core"] > 0
    run = results["host_local"]
    assert run["images"] == 8 and run["stages"]["images_per_second"] > 0
    assert run["of_ceiling"] == pytest.approx(
        run["stages"]["images_per_second"] / (results["cores"] * results["decode_one_core"])
    )
    assert run["of_pillow_loop"] > 0
    params = IndexLayout(tmp_path / "host_local").read_manifest()["params"]
    assert params["model"] == "tiny_conv" and params["preprocessing"]["crop"] == 64
    rows = dict(host_rows(results))
    assert any(measure.startswith("ceiling: ") for measure in rows)
    assert "of the ceiling" in rows["--executor local: first batch to last shard written"]
    assert json.loads((tmp_path / "host_results.json").read_text())["images"] == 8
