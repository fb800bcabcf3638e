"""Fixtures of the job and CLI tests."""

from __future__ import annotations

import os

import pytest

from tests.jobs.test_cli import PLANTED, invoke


@pytest.fixture(scope="session")
def planted_cli_index(planted_dataset, tmp_path_factory):
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("cli") / "idx"
    result = invoke(
        "index", folder, "--out", out, "--model", PLANTED, "--layers", "relu*,head", "--k", "3",
        "--executor", "local", "--trust-code", "--resize", "64", "--crop", "64", "--interpolation", "nearest",
        "--mean", "0,0,0", "--std", "1,1,1", "--no-progress", "--shard-size", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output


BUCKET = "actindex-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto in server mode) on 127.0.0.1 with bucket BUCKET; the endpoint and credentials
    are set the usual way, in the environment (subprocesses inherit them). Yields the endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()  # on a port it chose itself: nothing can take it in between
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield endpoint
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
