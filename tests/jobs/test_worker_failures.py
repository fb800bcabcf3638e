"""Workers that die, raise or run out of memory are retried; an image that crashes its decoder costs
only that image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from actindex.jobs.indexing import run_index
from actindex.queries.db import connect
from tests import faults
from tests.jobs.test_cli import invoke
from tests.jobs.test_index_reference import index_config
from tests.tables import assert_same_tables

CRASH_PLUGIN = Path(__file__).parents[1] / "crash_plugin"


def faulty_config(source, out, model: str, executor: str):
    config = index_config(source, out, executor=executor, trust_code=True)
    config.model, config.weights = f"python:tests.faults:{model}", None  # its own weights: resnet18's seeded
    return config


@pytest.mark.slow
def test_ray_actor_killed_mid_shard_is_restarted_and_tables_are_identical(
    ray_index, natural_dataset, tmp_path
):
    flag = faults.arm("die-once")
    summary = run_index(faulty_config(natural_dataset, tmp_path / "idx", "DieOnce", "ray"))
    assert not flag.exists(), "the actor never died: the test tested nothing"
    assert summary.indexed == 14
    assert_same_tables(tmp_path / "idx", ray_index)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_exception_in_a_batch_is_retried(executor, ray_index, natural_dataset, tmp_path):
    flag = faults.arm("raise-once")
    summary = run_index(faulty_config(natural_dataset, tmp_path / "idx", "RaiseOnce", executor))
    assert not flag.exists() and summary.indexed == 14 and summary.failed == 0
    assert_same_tables(tmp_path / "idx", ray_index)


def test_out_of_memory_splits_batches_and_fails_only_an_image_that_never_fits(
    natural_dataset, local_index_dir, tmp_path
):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in natural_dataset.rglob("*.*"):
        (folder / path.parent.name).mkdir(exist_ok=True)
        (folder / path.parent.name / path.name).write_bytes(path.read_bytes())
    Image.new("RGB", (80, 80), "white").save(folder / "a" / "white.png")
    summary = run_index(faulty_config(folder, tmp_path / "idx", "OutOfMemory", "local"))
    assert (summary.indexed, summary.failed) == (14, 1)
    con = connect(tmp_path / "idx")
    relpath, error = con.sql("SELECT relpath, error FROM images WHERE status = 'error'").fetchall()[0]
    assert relpath == "a/white.png" and error.startswith("out of memory")
    normal = connect(local_index_dir)  # the same images and configuration, without the fault
    assert normal.sql("SELECT count(*) FROM images WHERE status = 'ok'").fetchall()[0][0] == 14
    rows = con.sql("SELECT count(*) FROM activations").fetchall()[0][0]
    assert rows == normal.sql("SELECT count(*) FROM activations").fetchall()[0][0]


def crash_dataset(natural_dataset: Path, folder: Path) -> Path:
    folder.mkdir()
    for path in sorted(natural_dataset.rglob("*.*"))[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    Image.new("RGB", (40, 30), "gray").save(folder / "img00b_boom.png")  # sorts into the first batch
    return folder


CLI_ARGS = ["--model", "resnet18", "--weights", "random", "--layers", "layer4", "--resize", "36"]
CLI_ARGS += ["--crop", "32", "--batch-size", "4", "--no-progress"]


def run_cli(source: Path, out: Path, executor: str, *extra: str) -> subprocess.CompletedProcess:
    """The CLI in a process whose Pillow segfaults on a PNG named *boom* (tests/crash_plugin)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CRASH_PLUGIN), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "actindex", "index", str(source), "--out", str(out), *CLI_ARGS]
    command += ["--executor", executor, *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("decode", ["--cpu-decode", "--device-decode"])
def test_decoder_segfault_costs_one_image_in_the_plain_loop(natural_dataset, tmp_path, decode):
    """Also when the device decoder (torchvision.io, here on the CPU) hands the PNG to its CPU fallback:
    every CPU decode is journaled."""
    source = crash_dataset(natural_dataset, tmp_path / "images")
    first, second = (
        run_cli(source, tmp_path / "idx", "local", decode),
        run_cli(source, tmp_path / "idx", "local", decode),
    )
    assert first.returncode == second.returncode == -11  # twice: a kill by chance is not blamed on a file
    # the rerun in this process, where the file would decode: only the journal can make it an error row
    third = invoke("index", source, "--out", tmp_path / "idx", *CLI_ARGS, "--executor", "local", decode)
    assert third.exit_code == 0, third.output
    assert "7 images: 6 indexed, 1 failed" in third.stdout
    errors = (
        connect(tmp_path / "idx").sql("SELECT relpath, error FROM images WHERE status='error'").fetchall()
    )
    assert errors == [("img00b_boom.png", "crashed the decoder: the process died while decoding this file")]


@pytest.mark.slow
def test_decoder_segfault_costs_one_image_on_ray(natural_dataset, tmp_path):
    source = crash_dataset(natural_dataset, tmp_path / "images")
    result = run_cli(source, tmp_path / "idx", "ray")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "7 images: 6 indexed, 1 failed" in result.stdout
    errors = connect(tmp_path / "idx").sql("SELECT relpath FROM images WHERE status='error'").fetchall()
    assert errors == [("img00b_boom.png",)]
