"""Transient failures told apart from permanent ones, retried within a budget, and counted."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from PIL import Image

from actindex.pipeline.decode import AFTER_RETRIES, Decoder, stored_error_is_transient
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.retry import RETRIES, RetryPolicy, TransientError, describe, is_transient


def client_error(status: int, code: str, message: str = "") -> ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


def translated(error: ClientError, errno_: int) -> OSError:
    """What s3fs raises for a ClientError it has no exception class for."""
    exc = OSError(errno_, error.response["Error"]["Message"] or str(error))
    exc.__cause__ = error
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        client_error(503, "SlowDown", "Please reduce your request rate."),
        client_error(503, "503"),  # a HEAD's answer has no body
        client_error(500, "InternalError", "We encountered an internal error. Please try again."),
        client_error(502, "502"),
        client_error(504, "504"),
        client_error(429, "TooManyRequests"),
        translated(client_error(503, "SlowDown"), errno.EBUSY),
        translated(client_error(500, "InternalError"), getattr(errno, "EREMOTEIO", errno.EIO)),
        ConnectionClosedError(endpoint_url="http://s3"),
        EndpointConnectionError(endpoint_url="http://s3"),
        ReadTimeoutError(endpoint_url="http://s3"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        TimeoutError("timed out"),
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.ETIMEDOUT, "Connection timed out"),
        OSError(errno.ESTALE, "Stale file handle"),
    ],
    ids=repr,
)
def test_transient_failures(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        client_error(
            501, "NotImplemented", "A header you provided implies functionality that is not implemented"
        ),
        client_error(404, "NoSuchKey"),
        client_error(403, "AccessDenied"),
        client_error(400, "InvalidRequest"),
        translated(client_error(501, "NotImplemented"), errno.EIO),  # EIO, but the answer decides
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError("image file is truncated (3 bytes not processed)"),
        ValueError("broken data stream"),
        TransientError("s3://b/k", client_error(503, "SlowDown"), 3, 60.0),  # its budget is spent
    ],
    ids=repr,
)
def test_permanent_failures(exc):
    assert not is_transient(exc)


def test_describe_names_the_stores_answer():
    assert describe(translated(client_error(503, "SlowDown", "Please reduce your request rate."), 16)) == (
        "HTTP 503 SlowDown: Please reduce your request rate."
    )
    assert describe(client_error(503, "503")) == "HTTP 503"
    error = TransientError("s3://b/k.jpg", client_error(500, "InternalError", "Try again."), 4, 61.25)
    assert (
        str(error)
        == "s3://b/k.jpg: HTTP 500 InternalError: Try again. (still failing after 61.2 s of retries)"
    )


class Flaky:
    """Fails `failures` times with `exc`, then answers."""

    def __init__(self, failures: int, exc: BaseException):
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self, value):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return value


def test_a_transient_failure_is_retried_until_it_clears_and_counted():
    RETRIES.take()
    flaky = Flaky(3, OSError(errno.EIO, "Input/output error"))
    assert RetryPolicy(30, first_backoff_s=0.001).call(flaky, 7, what="x") == 7
    assert flaky.calls == 4 and RETRIES.take() == 3


def test_a_permanent_failure_is_raised_at_once():
    flaky = Flaky(1, FileNotFoundError(errno.ENOENT, "gone"))
    with pytest.raises(FileNotFoundError):
        RetryPolicy(30).call(flaky, 7, what="x")
    assert flaky.calls == 1


class Clock:
    """time.monotonic and time.sleep for retry.py: only the waits it asks for pass, so a budget is spent by
    backoff alone, never by this process being paused on a busy machine."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_budget_ends_the_retries_with_the_request_and_its_error(monkeypatch):
    monkeypatch.setattr("actindex.pipeline.retry.time", Clock())
    flaky = Flaky(10**9, client_error(503, "SlowDown", "Please reduce your request rate."))
    with pytest.raises(TransientError) as failed:
        RetryPolicy(0.05, first_backoff_s=0.01, max_backoff_s=0.01).call(flaky, 7, what="s3://b/k.jpg")
    assert failed.value.what == "s3://b/k.jpg" and flaky.calls >= 2
    assert "HTTP 503 SlowDown" in str(failed.value)
    flaky = Flaky(10**9, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(TransientError):
        RetryPolicy(0).call(flaky, 7, what="x")  # a budget of 0: no retry at this layer
    assert flaky.calls == 1


def test_a_budget_below_zero_is_refused():
    with pytest.raises(ValueError, match="at least 0"):
        RetryPolicy(-1)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(path)
    return str(path)


def test_a_local_read_error_is_retried_not_recorded(photo, monkeypatch):
    """EIO from a network file system, twice: the image decodes, no error row."""
    real = Image.open
    failures = []

    def flaky_open(fp, *args, **kwargs):
        if len(failures) < 2:
            failures.append(fp)
            raise OSError(errno.EIO, "Input/output error")
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", flaky_open)
    decoded = Decoder(Preprocessing(resize=16, crop=16), retry=RetryPolicy(30, first_backoff_s=0.001))(photo)
    assert decoded.error is None and decoded.pixels.shape == (3, 16, 16) and len(failures) == 2


def test_a_read_error_that_never_clears_fails_or_is_recorded_on_request(photo, monkeypatch):
    def broken_open(fp, *args, **kwargs):
        raise OSError(errno.ESTALE, "Stale file handle")

    monkeypatch.setattr(Image, "open", broken_open)
    prep, policy = Preprocessing(resize=16, crop=16), RetryPolicy(0)
    with pytest.raises(TransientError, match="Stale file handle"):
        Decoder(prep, retry=policy)(photo)
    recorded = Decoder(prep, retry=policy, record_after_retries=True)(photo)
    assert recorded.pixels is None and recorded.error.startswith(f"{AFTER_RETRIES}: ")
    assert "Stale file handle" in recorded.error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        ("unreadable: service unavailable", True),
        ("unreadable: we encountered an internal error. please try again.", True),
        ("unreadable: internal server error", True),
        ("unreadable: input/output error", True),
        ("unreadable: stale file handle", True),
        ("failed: ClientPayloadError: Response payload is not completed", True),
        ("failed: ConnectionClosedError: Connection was closed before we received a valid response", True),
        ("unreadable: file not found", False),
        ("unreadable: permission denied", False),
        ("corrupt: broken data stream when reading image file", False),
        ("failed: KeyError: 'x'", False),
        (f"{AFTER_RETRIES}: HTTP 500: Internal Server Error", False),  # only --retry-errors retries these
    ],
)
def test_stored_errors_of_older_indexes(error, transient):
    assert stored_error_is_transient(error) is transient
