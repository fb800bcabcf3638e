"""Kill the job at many points; rerunning finishes it with tables identical to an uninterrupted run.
Also: readers never see half a shard, a second job on the same index refuses, incremental reruns."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.jobs.status import index_status
from actindex.pipeline.layout import IndexLayout
from actindex.pipeline.lock import IndexBusyError
from actindex.pipeline.preprocess import Preprocessing
from actindex.queries.db import connect
from tests.conftest import natural_image
from tests.jobs.test_cli import invoke
from tests.tables import assert_matches_forward, assert_same_tables, forward_maps, table_rows

PREP = Preprocessing(resize=36, crop=32)
ARGS = [
    "--model",
    "resnet18",
    "--weights",
    "random",
    "--layers",
    "layer2,layer4",
    "--k",
    "4",
    "--shard-size",
    "2",
    "--batch-size",
    "2",
]
ARGS += ["--resize", "36", "--crop", "32", "--executor", "local", "--no-progress"]
REPO = Path(__file__).parents[2]
NODE_PLUGIN = REPO / "tests" / "node_plugin"
WAIT_S = 600  # for a job to reach a point (a bound for failures; a loaded CI machine takes a minute)


def make_images(folder: Path, count: int, first: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + count):
        natural_image(i, 48 + i % 5, 40 + i % 3).save(folder / f"img{i:03d}.png")
    return folder


def config(source: Path, out: Path, **kwargs) -> IndexRequest:
    return IndexRequest(
        source=str(source),
        out=str(out),
        model="resnet18",
        weights="random",
        layers=("layer2", "layer4"),
        k=4,
        shard_size=2,
        batch_size=2,
        preprocessing=PREP,
        executor="local",
        progress=False,
        **kwargs,
    )


def start_job(source: Path, out: Path, pause: Path | None = None, after: int = 0) -> subprocess.Popen:
    """The job in its own process, on as many torch threads as this one (the same threads give the same
    bits: tests/tables.py); with `pause`, it hangs once it has written `after` activations files
    (tests/node_plugin)."""
    command = [sys.executable, "-m", "actindex", "index", str(source), "--out", str(out), *ARGS]
    env = {**os.environ, "PYTHONPATH": f"{NODE_PLUGIN}{os.pathsep}{REPO}"}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    if pause is not None:
        env.update(ACTINDEX_TEST_PAUSE_DIR=str(pause), ACTINDEX_TEST_PAUSE_AFTER=str(after))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_pause(pause: Path, proc: subprocess.Popen) -> None:
    """Until the job hangs at its pause; fails if it ended first."""
    deadline = time.time() + WAIT_S
    while not any(pause.iterdir()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert any(pause.iterdir()), stderr_of(proc) or "no pause"


def stderr_of(proc: subprocess.Popen) -> str:
    """The end of an ended job's stderr ("" while it runs: reading would wait for its end)."""
    return proc.communicate()[1][-3000:] if proc.poll() is not None else ""


def wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = WAIT_S) -> bool:
    """True once `proc` holds the index lock (it has planned and starts indexing)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        lock = out / ".lock"
        if lock.is_file() and f'"pid": {proc.pid}' in lock.read_text():
            return True
        time.sleep(0.01)
    return False


def wait_for_markers(out: Path, proc: subprocess.Popen, count: int, timeout: float = WAIT_S) -> None:
    """Return as soon as `count` shards are complete (or the job has ended)."""
    done = out / "_done"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if done.is_dir() and sum(1 for p in done.iterdir() if p.suffix == ".json") >= count:
            return
        time.sleep(0.002)


def assert_readers_see_whole_shards(out: Path) -> int:
    markers = IndexLayout(out).completed_shards()
    if not (out / "run.json").is_file():
        return 0
    con = connect(out)
    images, distinct = con.sql("SELECT count(*), count(DISTINCT image_id) FROM images").fetchall()[0]
    assert images == distinct == sum(m["images"] for m in markers.values())
    rows = con.sql("SELECT count(*) FROM activations").fetchall()[0][0]
    assert rows == sum(m["activation_rows"] for m in markers.values())
    return len(markers)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("resume") / "images", 40)


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "idx"
    run_index(config(dataset, out))
    return out


@pytest.mark.slow
def test_ten_kills_then_resume_gives_identical_tables(dataset, uninterrupted, tmp_path):
    out = tmp_path / "idx"
    rng = random.Random(7)
    # None: killed while still loading the model; 0: just after taking the lock; n: mid-shard, with n shards
    # (of 20) complete or n - 1 (the last marker may not be committed yet), plus a random few milliseconds.
    # A kill never depends on how fast the job runs: each run hangs (tests/node_plugin) at the first
    # activations file of the shard after the n-th (2 files a shard; at its first file for None and 0).
    targets = [None, 0, 1, 3, 5, 7, 9, 12, 15, 18]
    shards_at_kill = []
    for i, target in enumerate(targets):
        done = shards_at_kill[-1] if shards_at_kill else 0
        pause = tmp_path / f"pause-{i}"
        pause.mkdir()
        proc = start_job(dataset, out, pause, after=2 * max((target or 0) - done, 0) + 1)
        if target is None:
            time.sleep(rng.uniform(0.3, 1.0))
        elif target == 0:
            assert wait_for_lock(out, proc), stderr_of(proc) or "no lock"
            time.sleep(rng.uniform(0, 0.03))
        else:
            wait_for_pause(pause, proc)
            time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        shards_at_kill.append(assert_readers_see_whole_shards(out))
    assert len(set(shards_at_kill)) >= 6, shards_at_kill  # the kills landed at different points
    assert shards_at_kill[-1] < 20, f"the job finished before the last kill: {shards_at_kill}"
    final = invoke("index", dataset, "--out", out, *ARGS)  # the same command; in-process: nobody kills it
    assert final.exit_code == 0, final.output
    assert "40 images: 40 indexed, 0 failed" in final.stdout
    assert_same_tables(out, uninterrupted)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["images"] == 40
    assert not list(out.rglob(".*.tmp-*")), "temporary files left behind"


def test_sigint_stops_cleanly_and_resume_finishes(dataset, uninterrupted, tmp_path):
    out = tmp_path / "idx"
    proc = start_job(dataset, out)
    assert wait_for_lock(out, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130 and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert_readers_see_whole_shards(out)
    run_index(config(dataset, out))
    assert_same_tables(out, uninterrupted)


def test_second_job_refuses_and_a_killed_job_leaves_no_stale_lock(dataset, tmp_path, monkeypatch):
    out = tmp_path / "idx"
    pause = tmp_path / "pause"
    pause.mkdir()
    proc = start_job(dataset, out, pause, after=40)  # hangs at its last activations file: it cannot finish
    try:
        assert wait_for_lock(out, proc)  # the job takes the lock first, before it loads the model
        with monkeypatch.context() as patched:  # the second job refuses before loading any model
            patched.setattr("actindex.jobs.worker.plan_model", _no_model)
            patched.setattr("actindex.pipeline.models.load_model", _no_model)
            with pytest.raises(IndexBusyError, match=f"pid {proc.pid}"):
                run_index(config(dataset, out))
        assert index_status(out).locked_by is not None  # being created: no run.json yet, or indexing
        wait_for_markers(out, proc, 1)
        assert index_status(out).locked_by is not None and index_status(out).shards_done >= 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert index_status(out).locked_by is None
    summary = run_index(config(dataset, out))
    assert summary.images == 40 and summary.shards_done_before >= 1


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_adding_images_indexes_only_them_and_equals_a_fresh_run(dataset, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(dataset, folder)
    out = tmp_path / "idx"
    first = run_index(config(folder, out))
    make_images(folder, 5, first=100)
    st = index_status(out)
    assert (st.new_images, st.missing_images, st.shards_pending) == (5, 0, 3)
    second = run_index(config(folder, out))
    assert second.new_images == 5 and second.shards_done_before == 20 and second.images == 45
    assert_equivalent_to_a_fresh_run(out, folder, tmp_path / "fresh")
    assert first.new_images == 40


def test_removed_images_are_reported_then_pruned(dataset, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(dataset, folder)
    out = tmp_path / "idx"
    run_index(config(folder, out))
    for name in ("img003.png", "img010.png", "img011.png"):
        (folder / name).unlink()
    st = index_status(out)
    assert (st.missing_images, st.new_images) == (3, 0)
    kept = run_index(config(folder, out))
    assert kept.missing == 3 and kept.images == 40  # reported, not dropped
    pruned = run_index(config(folder, out, prune=True))
    assert pruned.pruned == 3 and pruned.images == 37 and pruned.new_images == 0
    con = connect(out)
    names = {r[0] for r in con.sql("SELECT relpath FROM images").fetchall()}
    assert "img003.png" not in names and len(names) == 37
    assert (
        con.sql("SELECT count(*) FROM topk JOIN images USING (image_id)").fetchall()[0][0]
        == con.sql("SELECT count(*) FROM topk").fetchall()[0][0]
    )
    assert_equivalent_to_a_fresh_run(out, folder, tmp_path / "fresh")
    assert index_status(out).missing_images == 0


def test_adding_and_removing_at_once_with_prune_equals_a_fresh_run(dataset, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(dataset, folder)
    out = tmp_path / "idx"
    run_index(config(folder, out))
    (folder / "img005.png").unlink()
    make_images(folder, 3, first=200)
    summary = run_index(config(folder, out, prune=True))
    assert (summary.pruned, summary.new_images, summary.images) == (1, 3, 42)
    assert summary.reindexed == 1  # img004, which shared a shard with img005
    assert_equivalent_to_a_fresh_run(out, folder, tmp_path / "fresh")


def assert_equivalent_to_a_fresh_run(out: Path, folder: Path, fresh: Path) -> None:
    """The index equals a fresh run over the same images: the same images rows, and (the new images were
    batched differently) activations and top-k within float32 rounding of per-image forward passes, as the
    fresh run's are."""
    run_index(config(folder, fresh))
    assert table_rows(out, "images") == table_rows(fresh, "images")
    maps = forward_maps(folder, "resnet18", ["layer2", "layer4"], PREP)
    assert_matches_forward(out, maps, k=4)
    assert_matches_forward(fresh, maps, k=4)


def test_reruns_never_read_an_activation_file(dataset, tmp_path):
    """Resume, incremental and --prune runs with every existing activation file replaced by garbage: they
    succeed (so they read none of them), and with the files put back the index equals a fresh run."""
    folder = tmp_path / "images"
    shutil.copytree(dataset, folder)
    out = tmp_path / "idx"
    run_index(config(folder, out))
    layout = IndexLayout(out)
    for shard in (18, 19):  # a killed run: the last shards never got their markers
        layout.marker(shard).unlink()
    originals = _garble_activation_files(out)
    resumed = run_index(config(folder, out))
    assert (resumed.shards_done_before, resumed.new_images) == (18, 4)
    (folder / "img007.png").unlink()
    make_images(folder, 3, first=300)
    for path, data in _garble_activation_files(out).items():
        originals.setdefault(path, data)  # the files garbled before keep their real bytes
    changed = run_index(config(folder, out, prune=True))
    assert (changed.pruned, changed.new_images, changed.reindexed) == (1, 3, 1)
    for path, data in originals.items():
        if path.exists():  # the pruned shard's files are gone
            path.write_bytes(data)
    assert_equivalent_to_a_fresh_run(out, folder, tmp_path / "fresh")


def _garble_activation_files(out: Path) -> dict[Path, bytes]:
    originals = {}
    for path in (out / "activations").rglob("*.parquet"):
        originals[path] = path.read_bytes()
        path.write_bytes(b"not parquet: a run that read this file would fail")
    return originals


def test_pipeline_never_imports_ray():
    names = ("models", "recorder", "receptive_field", "layout", "decode")
    modules = ", ".join(f"actindex.pipeline.{name}" for name in names)
    code = f"import sys, {modules}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.stdout.strip() == "False"


def test_the_forward_check_catches_a_wrong_value_a_wrong_peak_and_a_missed_image(
    dataset, uninterrupted, tmp_path
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    maps = forward_maps(dataset, "resnet18", ["layer2", "layer4"], PREP)
    assert_matches_forward(uninterrupted, maps, k=4)
    for change in ("act", "peak", "topk"):
        out = tmp_path / change
        shutil.copytree(uninterrupted, out)
        if change == "topk":  # drop the best image of unit 0 from its list: a missed image
            path = out / "topk" / "layer=layer4" / "topk.parquet"
            table = pq.read_table(path)
            keep = [
                not (u == 0 and r == 1)
                for u, r in zip(table["unit"].to_pylist(), table["rank"].to_pylist(), strict=True)
            ]
            table = table.filter(pa.array(keep))
            ranks = [
                r - 1 if u == 0 else r
                for u, r in zip(table["unit"].to_pylist(), table["rank"].to_pylist(), strict=True)
            ]
            pq.write_table(
                table.set_column(table.schema.get_field_index("rank"), "rank", pa.array(ranks, pa.int32())),
                path,
            )
        else:
            path = next((out / "activations" / "layer=layer2").glob("*.parquet"))  # 4 x 4 maps at 32 px
            table = pq.read_table(path)
            if change == "act":  # 1% too large: far beyond float rounding
                column = pa.array([a * 1.01 + 1e-3 for a in table["act"].to_pylist()], pa.float32())
                table = table.set_column(table.schema.get_field_index("act"), "act", column)
            else:  # every peak moved one column over
                column = pa.array([(x + 1) % 4 for x in table["x"].to_pylist()], pa.int16())
                table = table.set_column(table.schema.get_field_index("x"), "x", column)
            pq.write_table(table, path)
        with pytest.raises(AssertionError):
            assert_matches_forward(out, maps, k=4)
