"""A transient fault is never a bad image: behind an S3 that fails a share of its requests (tests/s3faults.py:
503 SlowDown, 500, bodies cut short, replies dropped after the store applied the request), a store that goes
down for a while, and a local disk that fills up, every job ends with the tables of a fault-free run, or
stops in one line and resumes to them. Transient error rows of older indexes, and every error row on
request, are indexed again."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading

import pytest

from actindex.jobs.indexing import JobStoppedError, run_index
from actindex.jobs.spec import IndexRequest
from actindex.pipeline import layout as writer
from actindex.pipeline.decode import DecodedImage, Decoder
from actindex.pipeline.layout import IndexLayout
from actindex.pipeline.lock import ObjectLease
from actindex.pipeline.retry import RetryPolicy
from actindex.queries.db import connect
from tests.conftest import PLANTED, PLANTED_PREP, natural_image
from tests.jobs.conftest import BUCKET
from tests.jobs.test_cli import invoke
from tests.s3faults import FAULTS, FaultyS3
from tests.tables import assert_same_tables

s3fs = pytest.importorskip("s3fs")

IMAGES = 112  # 7 shards of 16
FAILING = "c1/img004.jpg"  # the 40th image in sorted order: shard 2


CLI_ARGS = (  # request()'s job, as `actindex index` options
    "--model", PLANTED, "--layers", "relu1,relu2", "--k", "3", "--trust-code", "--resize", "64",
    "--crop", "64", "--interpolation", "nearest", "--mean", "0,0,0", "--std", "1,1,1", "--no-progress",
    "--shard-size", "16", "--batch-size", "8",
)  # fmt: skip


def request(source: str, out: str, **kwargs) -> IndexRequest:
    """The planted net at 64 px: a few seconds a job."""
    options = dict(
        model=PLANTED,
        layers=("relu1", "relu2"),
        preprocessing=PLANTED_PREP,
        trust_code=True,
        k=3,
        shard_size=16,
        batch_size=8,
        executor="local",
        progress=False,
    )
    return IndexRequest(source=source, out=out, **{**options, **kwargs})


def write_photos(folder, count: int = IMAGES):
    for i in range(count):
        (folder / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        natural_image(i, 64 + i % 5 * 8, 48 + i % 3 * 8).save(folder / f"c{i % 3}" / f"img{i:03d}.jpg")
    return folder


@pytest.fixture(scope="module")
def photos(s3_endpoint, tmp_path_factory) -> str:
    """IMAGES JPEGs in three label folders on the S3 server (uploaded with no faults); their URL."""
    folder = write_photos(tmp_path_factory.mktemp("fault_photos"))
    s3fs.S3FileSystem().put(str(folder) + "/", f"{BUCKET}/faults/photos/", recursive=True)
    return f"s3://{BUCKET}/faults/photos/"


@pytest.fixture(scope="module")
def clean(photos) -> str:
    """The fault-free run, S3 to S3."""
    out = f"s3://{BUCKET}/faults/clean/"
    summary = run_index(request(photos, out))
    assert summary.indexed == IMAGES and summary.retried_requests == 0
    return out


@pytest.fixture
def proxy(s3_endpoint, monkeypatch):
    """A FaultyS3 in front of the tests' S3 server, as the endpoint of this test (no faults until set)."""
    with FaultyS3(s3_endpoint) as faulty:
        monkeypatch.setenv("AWS_ENDPOINT_URL", faulty.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        yield faulty
    s3fs.S3FileSystem.clear_instance_cache()


def manifest(out: str) -> dict:
    return IndexLayout(out).read_manifest()


def errors(out: str) -> list:
    return connect(out).sql("SELECT relpath, error FROM images WHERE status = 'error'").fetchall()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twenty_percent_faults_lose_nothing(photos, clean, proxy, seed):
    proxy.random.seed(seed)
    proxy.set_rate(0.2)
    out = f"s3://{BUCKET}/faults/seed{seed}/"
    summary = run_index(request(photos, out, retry_budget=5))
    proxy.set_rate(0.0)
    assert set(proxy.counts) == set(FAULTS), proxy.counts  # every kind of fault was met, reads and writes
    assert sum(proxy.counts.values()) >= 0.1 * proxy.requests, (proxy.counts, proxy.requests)
    assert summary.failed == 0 and errors(out) == []
    assert_same_tables(clean, out)
    recorded = manifest(out)
    assert recorded["retried_requests"] > 0 and recorded["retried_requests"] == summary.retried_requests
    assert recorded["recorded_after_retries"] == 0
    assert recorded["config"]["retry_budget"] == 5


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_request_that_outlasts_its_retries_fails_its_shard_attempt_not_the_image(
    photos, clean, proxy, executor
):
    """With a budget of 0 only botocore's 3 attempts are left: an object whose first 3 requests fail
    ends the first attempt at its shard, and the shard runs again in the same run. On Ray the job runs as
    a process of its own (its local Ray's workers inherit the proxy's endpoint)."""
    proxy.fail_key(FAILING, count=3)
    out = f"s3://{BUCKET}/faults/exhausted-{executor}/"
    if executor == "local":
        run_index(request(photos, out, retry_budget=0))
    else:
        command = [
            sys.executable,
            "-m",
            "actindex",
            "index",
            photos,
            "--out",
            out,
            *CLI_ARGS,
            "--retry-budget",
        ]
        done = subprocess.run(
            [*command, "0", "--executor", "ray", "--workers", "1"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "1 shard attempts failed and ran again" in done.stdout, done.stdout
    assert proxy.counts["key"] == 3
    assert manifest(out)["failed_shard_attempts"] == 1
    assert errors(out) == []
    assert_same_tables(clean, out)


def test_a_shard_that_keeps_failing_stops_the_job_in_one_line_and_the_rerun_completes(photos, clean, proxy):
    proxy.fail_key(FAILING, count=1000)
    out = f"s3://{BUCKET}/faults/keeps-failing/"
    with pytest.raises(JobStoppedError) as stopped:
        run_index(request(photos, out, retry_budget=0))
    message = str(stopped.value)
    assert "\n" not in message and message.startswith("stopped: shard 2 failed 4 times"), message
    assert f"{FAILING}: HTTP 503" in message, message  # the request, and the store's answer
    assert "rerun the same command to resume" in message and "of 7 shards are kept" in message
    assert manifest(out)["status"] == "stopped" and manifest(out)["failed_shard_attempts"] == 4
    proxy.failing.clear()
    run_index(request(photos, out, retry_budget=0))
    assert_same_tables(clean, out)


def test_the_store_down_for_a_while_is_waited_out_or_stops_and_resumes(photos, clean, proxy):
    """Every request fails for 3 s from the 150th on. With a 1 s budget the job either waits it out (a
    shard runs 4 times) or stops in one line with exit code 2; either way the rerun gives the clean
    tables."""
    out = f"s3://{BUCKET}/faults/down/"
    args = (*CLI_ARGS, "--executor", "local", "--retry-budget", "1")
    proxy.outage(after=150, seconds=3)
    first = invoke("index", photos, "--out", out, *args)
    assert proxy.counts["down"] > 0
    if first.exit_code == 2:
        last = first.output.strip().splitlines()[-1]
        assert last.startswith("Error: stopped: ") and "rerun the same command to resume" in last, last
        rerun = invoke("index", photos, "--out", out, *args)
        assert rerun.exit_code == 0, rerun.output
    else:
        assert first.exit_code == 0, first.output
        assert "transient failures: " in first.output and " requests retried" in first.output, first.output
    assert errors(out) == []
    assert_same_tables(clean, out)


def test_a_lease_renewal_under_faults_keeps_the_lease(s3_endpoint, proxy):
    layout = IndexLayout(f"s3://{BUCKET}/faults/lease/", RetryPolicy(5))
    with ObjectLease(layout) as lease:
        proxy.set_rate(0.3)
        for _ in range(10):
            lease.renew()
        proxy.set_rate(0.0)
        proxy.drop_next(
            1, "PUT"
        )  # the store applies the renewal; its reply is lost: botocore's retry gets 412
        lease.renew()
        assert proxy.counts["drop_reply"] >= 1
        etag, holder = lease._read()
        assert lease.lost is None and holder["holder"] == lease.token and etag == lease.etag
        lease.check()
    assert not layout.exists(layout.root / ".lock")  # released: the ETag it kept was the object's


def test_a_lease_taken_with_its_reply_lost_is_this_jobs(s3_endpoint, proxy):
    layout = IndexLayout(f"s3://{BUCKET}/faults/lease-taken/", RetryPolicy(5))
    proxy.drop_next(1, "PUT")  # the conditional create is applied; the retry answers 412
    with ObjectLease(layout) as lease:
        etag, holder = lease._read()
        assert holder["holder"] == lease.token and etag == lease.etag
    assert not layout.exists(layout.root / ".lock")


# ------------------------------------------------------------------------------------------- repairs


@pytest.fixture(scope="module")
def local_photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("local_fault_photos"), 40)


@pytest.fixture(scope="module")
def local_clean(local_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("local_clean") / "idx"
    run_index(request(str(local_photos), str(out)))
    return out


def test_an_older_index_with_transient_error_rows_is_repaired_by_a_rerun(
    local_photos, local_clean, tmp_path, monkeypatch
):
    """Plant what actindex stored before it told transient failures apart: "unreadable: service
    unavailable" (a 503 through s3fs) for one image. A plain rerun indexes its shard again."""
    failing = str(local_photos / "c1" / "img004.jpg")
    decode = Decoder._decode

    def old_decoder(self, uri):
        if uri == failing:
            return DecodedImage(None, 0, 0, "unreadable: service unavailable")
        return decode(self, uri)

    out = tmp_path / "idx"
    with monkeypatch.context() as patch:
        patch.setattr(Decoder, "_decode", old_decoder)
        run_index(request(str(local_photos), str(out)))
    assert errors(out) == [("c1/img004.jpg", "unreadable: service unavailable")]
    summary = run_index(request(str(local_photos), str(out)))
    assert summary.retried_errors == 1 and summary.new_images == 0 and summary.shards_done_before == 2
    assert errors(out) == []
    assert_same_tables(local_clean, out)


def test_retry_errors_indexes_every_error_rows_shard_again(local_photos, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in local_photos.rglob("*.jpg"):
        (photos / path.relative_to(local_photos)).parent.mkdir(exist_ok=True)
        (photos / path.relative_to(local_photos)).write_bytes(path.read_bytes())
    broken = photos / "c2" / "img011.jpg"
    good = broken.read_bytes()
    broken.write_bytes(good[:200])  # cut short: a permanent error, "truncated"
    out = tmp_path / "idx"
    run_index(request(str(photos), str(out)))
    [(relpath, error)] = errors(out)
    assert relpath == "c2/img011.jpg" and error.startswith("truncated: "), error
    broken.write_bytes(good)  # fixed since
    assert run_index(request(str(photos), str(out))).retried_errors == 0  # permanent: kept as it is
    assert len(errors(out)) == 1
    summary = run_index(request(str(photos), str(out), retry_errors=True))
    assert summary.retried_errors == 1 and errors(out) == []
    run_index(request(str(photos), str(tmp_path / "clean")))
    assert_same_tables(tmp_path / "clean", out)


def test_failures_that_never_clear_can_be_recorded_and_retried_later(photos, clean, proxy):
    proxy.fail_key(FAILING, count=10**6)
    out = f"s3://{BUCKET}/faults/recorded/"
    summary = run_index(request(photos, out, retry_budget=0, record_failed_reads=True))
    assert summary.recorded_after_retries == 1 and manifest(out)["recorded_after_retries"] == 1
    [(relpath, error)] = errors(out)
    assert relpath == FAILING and error.startswith("unreadable after retries: "), error
    status = invoke("status", out)
    assert "1 images recorded 'unreadable after retries'" in status.output, status.output
    proxy.failing.clear()
    assert run_index(request(photos, out, retry_budget=0)).retried_errors == 0  # kept until asked
    assert run_index(request(photos, out, retry_budget=0, retry_errors=True)).retried_errors == 1
    assert errors(out) == []
    assert_same_tables(clean, out)


# ----------------------------------------------------------------------------------------- the disk


@pytest.mark.parametrize(
    ("code", "where", "nth"),
    [(errno.ENOSPC, "activations", 3), (errno.EROFS, "_done", 2), (errno.ENOSPC, "/topk/layer=", 1)],
)
def test_a_full_or_read_only_disk_stops_in_one_line_with_nothing_half_committed(
    local_photos, local_clean, tmp_path, monkeypatch, code, where, nth
):
    """The nth write of the index's files under `where` fails with `code` halfway through (CI runs as
    root: a chmod'd folder still takes writes, so the failure is planted)."""
    out = tmp_path / "idx"
    write = writer.atomic_write_bytes
    seen, failed, lock = [], [], threading.Lock()  # the layers of a shard are written in parallel

    def full_disk(path, data):
        with lock:
            if where in str(path):
                seen.append(path)
                if len(seen) == nth:
                    failed.append(path)
            fail = bool(failed) and failed[0] == path
        if fail:
            with writer.replacing(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])  # the disk fills up halfway through
                raise OSError(code, os.strerror(code), str(path))
        write(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(writer, "atomic_write_bytes", full_disk)
        with pytest.raises(JobStoppedError) as stopped:
            run_index(request(str(local_photos), str(out)))
    message = str(stopped.value)
    expected = f"stopped: cannot write {failed[0]}: {os.strerror(code)}"
    assert "\n" not in message and message.startswith(expected), message
    assert "free space or fix the disk, then rerun the same command to resume" in message
    layout = IndexLayout(out)
    markers = layout.completed_shards()
    assert f"{len(markers)} of 3 shards are kept" in message
    for marker in markers.values():  # every committed shard is whole
        assert all((out / f).is_file() for f in marker["files"])
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["status"] == "stopped" and os.strerror(code) in recorded["stopped"]
    run_index(request(str(local_photos), str(out)))  # space freed
    assert_same_tables(local_clean, out)
