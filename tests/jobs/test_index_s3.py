"""An index on an object store (moto's S3 API on 127.0.0.1, started by the fixtures): SIGKILLed runs resume
to identical tables, a concurrent reader never sees a partial shard, a second writer is refused, the lease
is taken over only from a dead or expired holder, incremental runs and --prune work there, and the CLI
reads it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import actindex
from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.jobs.status import index_status
from actindex.pipeline.layout import IndexLayout
from actindex.pipeline.lock import (
    LEASE_SECONDS,
    SKEW_SECONDS,
    IndexBusyError,
    LeaseLostError,
    ObjectLease,
    is_locked,
)
from actindex.pipeline.preprocess import Preprocessing
from actindex.queries.db import connect
from tests.containers import content_tables
from tests.jobs.conftest import BUCKET
from tests.jobs.test_cli import PLANTED, assert_top_lists_the_red_images_in_order, invoke
from tests.jobs.test_resume import ARGS, make_images
from tests.jobs.test_sources_s3 import PLANTED_ARGS
from tests.ports import refused_port
from tests.tables import assert_same_tables

s3fs = pytest.importorskip("s3fs")

SHARDS = 12  # 24 images, 2 per shard
REPO = Path(__file__).parents[2]
NODE_PLUGIN = REPO / "tests" / "node_plugin"
WAIT_S = 600  # for a job to reach a point (a bound for failures; a loaded CI machine takes a minute)


def request(source: str, out: str, **kwargs) -> IndexRequest:
    """The job of tests/jobs/test_resume.py (resnet18 at 32 pixels, 2 images a shard)."""
    return IndexRequest(
        source=source,
        out=out,
        model="resnet18",
        weights="random",
        layers=("layer2", "layer4"),
        k=4,
        shard_size=2,
        batch_size=2,
        preprocessing=Preprocessing(resize=36, crop=32),
        executor="local",
        progress=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def photos(s3_endpoint, tmp_path_factory) -> str:
    """24 images in a folder on the S3 server; its URL."""
    folder = make_images(tmp_path_factory.mktemp("s3_resume") / "images", 2 * SHARDS)
    s3fs.S3FileSystem().put(str(folder) + "/", f"{BUCKET}/resume/images/", recursive=True)
    return f"s3://{BUCKET}/resume/images/"


@pytest.fixture(scope="module")
def uninterrupted(photos) -> str:
    out = f"s3://{BUCKET}/resume/uninterrupted/"
    run_index(request(photos, out))
    return out


def start_job(source: str, out: str, pause: Path | None = None, after: int = 0) -> subprocess.Popen:
    """The job in its own process (it inherits the endpoint and credentials from the environment), on as
    many torch threads as this one (the same threads give the same bits: tests/tables.py); with `pause`, it
    hangs once it has written `after` activations files (tests/node_plugin), mid-run."""
    command = [sys.executable, "-m", "actindex", "index", source, "--out", out, *ARGS]
    env = {**os.environ, "PYTHONPATH": f"{NODE_PLUGIN}{os.pathsep}{REPO}"}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    if pause is not None:
        env.update(ACTINDEX_TEST_PAUSE_DIR=str(pause), ACTINDEX_TEST_PAUSE_AFTER=str(after))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def lease_holder(layout: IndexLayout) -> dict | None:
    return layout.read_json(layout.root / ".lock")


def wait_until(condition, proc: subprocess.Popen, timeout: float = WAIT_S) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


def assert_reader_sees_whole_shards(out: str) -> int:
    """What a reader sees is whole shards: every ok image in the images view has a row for each of the
    128 + 512 units of layer2 and layer4 in the activations view, and every shard holds 2 images. Returns
    the images seen."""
    if IndexLayout(out).read_manifest() is None:
        return 0
    con = connect(out)  # lists the markers, then reads the files they name: the job goes on meanwhile
    images, ok, distinct = con.sql(
        "SELECT count(*), count(*) FILTER (status = 'ok'), count(DISTINCT image_id) FROM images"
    ).fetchall()[0]
    rows = con.sql("SELECT count(*) FROM activations").fetchall()[0][0]
    assert images == distinct and images % 2 == 0
    assert rows == ok * (128 + 512)
    return images


@pytest.mark.slow
def test_killed_three_times_then_resumed_gives_identical_tables(photos, uninterrupted, monkeypatch, tmp_path):
    out = f"s3://{BUCKET}/resume/killed/"
    layout = IndexLayout(out)
    seen = []
    for after in (3, 5, 7):  # the run hangs at its 3rd (5th, 7th) activations file: 2 a shard, so mid-shard
        pause = tmp_path / f"pause-{after}"
        pause.mkdir()
        proc = start_job(photos, out, pause, after)
        try:
            # a killed job's lease is taken over at once: its holder ran here and is gone
            assert wait_until(lambda proc=proc: (lease_holder(layout) or {}).get("pid") == proc.pid, proc)
            if after == 3:
                assert_second_writer_refused(photos, out, proc.pid, monkeypatch)

            def paused(pause=pause) -> bool:
                assert_reader_sees_whole_shards(out)  # a concurrent reader, as the job writes
                return any(pause.iterdir())

            assert wait_until(paused, proc), proc.stderr.read() if proc.poll() is not None else "no pause"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        seen.append(assert_reader_sees_whole_shards(out))
    assert max(seen) < 2 * SHARDS, seen  # every kill left shards to do
    # what a kill inside a shard leaves: files written, no marker; readers never see them
    layout.put(layout.images_file(SHARDS - 1, "partial"), layout.fs.cat_file(str(_any_images_file(layout))))
    layout.put(layout.activations_file("layer2", SHARDS - 1, "partial"), b"half a shard")
    assert_reader_sees_whole_shards(out)
    summary = run_index(request(photos, out))  # the rerun, in this process
    assert (summary.images, summary.indexed) == (2 * SHARDS, 2 * SHARDS)
    assert_same_tables(out, uninterrupted)
    assert layout.read_manifest()["status"] == "complete"
    listed = {str(layout.root / f) for m in layout.completed_shards().values() for f in m["files"]}
    written = {str(path) for folder in layout.data_dirs() for path in layout.files(folder)}
    assert written == listed  # the killed attempts' files are gone
    assert lease_holder(layout) is None  # released at the end


def _any_images_file(layout: IndexLayout):
    return next(path for path in layout.files(layout.root / "images"))


def assert_second_writer_refused(source: str, out: str, pid: int, monkeypatch) -> None:
    with monkeypatch.context() as patched:  # refused before any model is loaded
        patched.setattr("actindex.jobs.worker.plan_model", _no_model)
        patched.setattr("actindex.pipeline.models.load_model", _no_model)
        with pytest.raises(IndexBusyError, match=f"pid {pid}"):
            run_index(request(source, out))
    assert f"pid {pid}" in is_locked(IndexLayout(out))
    assert f"pid {pid}" in index_status(out).locked_by


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_the_lease_is_taken_over_only_from_a_dead_or_expired_holder(s3_endpoint):
    layout = IndexLayout(f"s3://{BUCKET}/lease/")
    lock = layout.root / ".lock"
    me = socket.gethostname()
    with ObjectLease(layout) as held:
        assert lease_holder(layout)["pid"] == os.getpid()
        with pytest.raises(IndexBusyError, match=f"pid {os.getpid()}"), ObjectLease(layout):
            pass
        held.renew()
        held.check()  # still ours
        layout.put_json(lock, _lease("elsewhere", 1, time.time() + 60))  # another job took it over
        held.renew()
        with pytest.raises(LeaseLostError, match="another job took over"):
            held.check()
    assert lease_holder(layout)["host"] == "elsewhere"  # a lost lease is left to its new holder
    with pytest.raises(IndexBusyError, match="pid 1 on elsewhere"), ObjectLease(layout):
        pass
    layout.put_json(lock, _lease("elsewhere", 1, time.time() - SKEW_SECONDS - 1))  # expired
    with ObjectLease(layout):
        assert lease_holder(layout)["host"] == me
    assert lease_holder(layout) is None  # released
    gone = subprocess.Popen(["true"])
    gone.wait()
    layout.put_json(lock, _lease(me, gone.pid, time.time() + 60))  # a live lease of a process that died
    with ObjectLease(layout) as held:
        assert lease_holder(layout)["pid"] == os.getpid()
        held.renewed -= LEASE_SECONDS  # no renewal got through for a lease's length: it may be gone
        with pytest.raises(LeaseLostError, match="could not be renewed"):
            held.check()


def _lease(host: str, pid: int, expires: float) -> dict:
    return {"host": host, "pid": pid, "start": None, "since": time.time(), "expires": expires}


def test_writing_to_a_store_without_conditional_writes_is_refused(tmp_path):
    args = ("--model", PLANTED, "--layers", "relu1", "--trust-code")
    result = invoke("index", tmp_path, "--out", "memory://idx/", *args)
    assert result.exit_code == 2 and "cannot write an index to memory://" in result.output, result.output


def test_added_and_removed_images_and_the_cli_on_an_s3_index(s3_endpoint, planted_dataset):
    folder, _ = planted_dataset
    fs = s3fs.S3FileSystem()
    source, out = f"s3://{BUCKET}/grow/images/", f"s3://{BUCKET}/grow/idx/"
    fs.put(str(folder) + "/", f"{BUCKET}/grow/images/", recursive=True)
    fs.rm(f"{BUCKET}/grow/images/red/red2.png")

    def index(*extra: str) -> str:
        result = invoke("index", source, "--out", out, *PLANTED_ARGS, *extra)
        assert result.exit_code == 0, result.output
        return result.output

    assert "8 images: 8 indexed" in index()
    fs.put(str(folder / "red" / "red2.png"), f"{BUCKET}/grow/images/red/red2.png")
    fs.rm(f"{BUCKET}/grow/images/edge/edge0.png")
    status = invoke("status", out)
    assert status.exit_code == 0 and "8 images: 1 new, 1 missing" in status.output, status.output
    assert "8 images: 8 indexed" in index("--prune")
    assert "8 images: 0 new, 0 missing" in invoke("status", out).output
    fresh = f"s3://{BUCKET}/grow/fresh/"
    assert invoke("index", source, "--out", fresh, *PLANTED_ARGS).exit_code == 0
    assert content_tables(out) == content_tables(fresh)

    assert_top_lists_the_red_images_in_order(out)
    sql = invoke("sql", out, "SELECT count(*) AS n, min(uri) AS first FROM images")
    assert sql.exit_code == 0 and "8" in sql.output and f"s3://{BUCKET}/grow/images/" in sql.output
    idx = actindex.open(out)  # the notebook API reads the store in place too
    assert idx.top("relu1", 0, k=3).column("relpath").to_pylist() == [f"red/red{i}.png" for i in range(3)]
    assert idx.label_selectivity("relu1", k=3).to_pylist()[0]["dominant_label"] == "red"


@pytest.mark.slow
def test_ray_workers_read_the_images_and_write_the_index_on_the_store(photos, uninterrupted):
    """A local Ray started by the job (its workers inherit the endpoint and credentials): every file is
    written by a Ray worker process, straight to the store."""
    out = f"s3://{BUCKET}/resume/ray/"
    args = [arg if arg != "local" else "ray" for arg in ARGS]  # --executor ray
    command = [sys.executable, "-m", "actindex", "index", photos, "--out", out, *args, "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{2 * SHARDS} images: {2 * SHARDS} indexed, 0 failed" in done.stdout
    markers = IndexLayout(out).completed_shards().values()
    assert {m["writer"]["pid"] for m in markers} != {os.getpid()} and all(
        "node" in m["writer"] for m in markers
    )
    assert_same_tables(out, uninterrupted)  # the same batches on the same torch threads: the same bits


def test_duckdb_reads_the_store_without_an_extension(uninterrupted):
    con = connect(uninterrupted)
    assert con.sql("SELECT count(*) FROM activations").fetchall()[0][0] == 2 * SHARDS * (128 + 512)
    loaded = {
        row[0] for row in con.sql("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
    }
    assert "httpfs" not in loaded and "aws" not in loaded  # read through the registered fsspec filesystem


def test_an_unreachable_store_for_the_index_is_one_line_and_exit_code_2(
    s3_endpoint, planted_dataset, monkeypatch
):
    with refused_port() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # nothing listens there
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            out = f"s3://{BUCKET}/unreachable/"
            index = invoke("index", planted_dataset[0], "--out", out, *PLANTED_ARGS, "--retry-budget", "0")
            results = [index, invoke("status", out)]
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    for result in results:
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and "cannot reach the store" in lines[0], (
            result.output
        )
