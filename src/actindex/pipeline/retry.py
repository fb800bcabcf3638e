"""Transient failures (the infrastructure's fault) told apart from permanent ones (the input's), and retried.

    policy = RetryPolicy(budget_s=60.0)
    data = policy.call(read_bytes, "s3://bkt/a.jpg", what="s3://bkt/a.jpg")  # TransientError at the end
    is_transient(exc)      # 5xx, 429, SlowDown, timeouts, resets, cut-short bodies, EIO/ETIMEDOUT/ESTALE
    RETRIES.take()         # requests this process retried since the last take()

Two kinds of failure
--------------------
Permanent, the input's fault: an image that does not decode, an object or file that is not there, access
denied, too large, not an image, HTTP 501 NotImplemented, and every other HTTP 4xx. An image that fails
this way is an `images` row with status "error" (pipeline.decode); a file of the index that fails this
way stops the job.

Transient, the infrastructure's fault (`is_transient`):
  - HTTP 500, 502, 503 (S3's SlowDown), 504 and 429, and the S3 error codes that go with them (InternalError,
    ServiceUnavailable, SlowDown, RequestTimeout, Throttling, ...);
  - timeouts, refused, reset and closed connections, bodies cut short (aiohttp's ClientPayloadError,
    botocore's ConnectionClosedError, ReadTimeoutError, ...);
  - EIO, ETIMEDOUT, ESTALE (and ECONNRESET, ECONNABORTED, EREMOTEIO without an HTTP answer) from a file
    system: what network file systems answer when their server is slow or restarts.
They are retried; an image is never an error row for one of them, unless the run asks for it
(`record_after_retries`, the kind "unreadable after retries").

Where retries happen (they multiply, so each layer is bounded):
  1. botocore, in every S3 API call (`storage.S3_OPTIONS`: the "standard" mode, BOTOCORE_ATTEMPTS attempts,
     exponential backoff with full jitter) for HTTP 5xx/429/throttling and connection errors;
  2. `RetryPolicy.call`, around each operation actindex makes (an image's bytes, a listing page, a tar's
     member table, a Parquet row group, a shard file, a marker, the topk table, a lease write, a crop):
     it starts the whole operation again, with exponential backoff and full jitter, until `budget_s`
     seconds have passed since its first attempt. It covers what botocore does not: bodies cut short after
     the reply began, reads through file objects, local and network file systems, and errors that outlast
     botocore's attempts. s3fs's own retry loop is set to one attempt (storage.filesystem): it retries the
     same errors as these two and would multiply them.
A request whose budget runs out raises TransientError; the shard attempt that made it fails, and the
executor runs the shard again (jobs.tasks.MAX_SHARD_ATTEMPTS).
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_BUDGET_S = 60.0  # seconds a job's request is retried for, by default (--retry-budget)
READ_BUDGET_S = 10.0  # seconds for readers (status, queries, grids, reports): a person is waiting
BOTOCORE_ATTEMPTS = 3  # botocore's attempts per S3 API call, inside each of RetryPolicy's
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED}
    | {getattr(errno, "EREMOTEIO", errno.EIO)}
)
# exception classes (matched by name, so that nothing here imports botocore or aiohttp) that are transient
# whatever they say: connections refused, reset, closed or timed out, and bodies cut short
TRANSIENT_CLASSES = frozenset(
    {
        "ConnectionError",  # the builtin (resets, refused, broken pipes) and botocore's
        "TimeoutError",
        "timeout",
        "FSTimeoutError",
        "IncompleteRead",
        "RemoteDisconnected",
        "HTTPClientError",  # botocore: an exception in the HTTP client
        "ConnectionClosedError",
        "EndpointConnectionError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientPayloadError",  # aiohttp: a body cut short
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientOSError",
    }
)
_CLIENT_ERRORS = frozenset({"ClientError"})  # botocore's error with an HTTP answer
_STATUS_CODES = frozenset(str(status) for status in TRANSIENT_STATUS)  # a HEAD's error has no code: "503"


class TransientError(Exception):
    """A transient failure that outlasted its retry budget: the request, the store's last error, how long."""

    def __init__(self, what: str, cause: BaseException, attempts: int, seconds: float):
        self.what, self.cause, self.attempts, self.seconds = what, cause, attempts, seconds
        super().__init__(f"{what}: {describe(cause)} (still failing after {seconds:.1f} s of retries)")

    def __reduce__(self):  # crosses process boundaries (Ray) whole
        return (_rebuild, (self.what, describe(self.cause), self.attempts, self.seconds))

    @property
    def detail(self) -> str:
        """The store's error, one line."""
        return describe(self.cause)


def _rebuild(what: str, cause: str, attempts: int, seconds: float) -> TransientError:
    return TransientError(what, RuntimeError(cause), attempts, seconds)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is the infrastructure's fault and worth retrying (module docstring).
    A TransientError is not: its budget is spent."""
    if isinstance(exc, TransientError):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _verdict(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def _verdict(exc: BaseException) -> bool | None:
    """True/False when `exc` alone decides; None to look at what it wraps."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "UserError" in names:  # already told to the user (pipeline.errors): not to be tried again
        return False
    response = getattr(exc, "response", None)
    if names & _CLIENT_ERRORS and isinstance(response, dict):  # an HTTP answer decides
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(response.get("Error", {}).get("Code"))
        return status in TRANSIENT_STATUS or code in TRANSIENT_CODES or code in _STATUS_CODES
    if names & TRANSIENT_CLASSES:
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.__cause__ is not None:
            return None  # s3fs's translation of an HTTP answer (SlowDown is EBUSY there): the answer decides
        return exc.errno in TRANSIENT_ERRNOS
    return None


def describe(exc: BaseException) -> str:
    """An exception as one short line; a store's HTTP answer as "HTTP 503 SlowDown: <its message>"."""
    answer = None if isinstance(exc, TransientError) else _http_answer(exc)
    text = answer or " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _http_answer(exc: BaseException) -> str | None:
    """ "HTTP <status> <code>: <message>" of the botocore ClientError `exc` is or wraps (s3fs translates them
    into OSErrors whose text has neither the status nor the code)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict) and "Error" in response:
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            code = str(response["Error"].get("Code", ""))
            message = " ".join(str(response["Error"].get("Message", "")).split())
            head = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
            return f"{head}: {message}" if message else head
        current = current.__cause__ or current.__context__
    return None


class RetryCounter:
    """Retries made in this process, by this module and by botocore (storage.count_botocore_retries), taken
    by whoever reports them (a worker with each shard's result, the driver at the end): like logging, one per
    process, since botocore's clients are shared by every thread of a process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = 0

    def add(self, requests: int = 1) -> None:
        with self._lock:
            self._requests += requests

    def take(self) -> int:
        """Retries since the last take(), and start counting again."""
        with self._lock:
            value, self._requests = self._requests, 0
        return value


RETRIES = RetryCounter()


@dataclass(frozen=True)
class RetryPolicy:
    """How long a failing request is retried: exponential backoff with full jitter (a random wait between 0
    and first_backoff_s x 2^attempt, capped at max_backoff_s), for at most `budget_s` seconds after its first
    attempt. A request is never started again past that; the one running then may finish after it."""

    budget_s: float = DEFAULT_BUDGET_S  # seconds per request; 0 = no retries at this layer
    first_backoff_s: float = 0.2  # the first wait is at most this long
    max_backoff_s: float = 10.0  # no wait is longer

    def __post_init__(self) -> None:
        if self.budget_s < 0:
            raise ValueError(f"the retry budget must be at least 0 seconds (got {self.budget_s})")

    def call(self, fn: Callable[..., T], *args, what: str, **kwargs) -> T:
        """fn(*args, **kwargs), started again after each transient failure while the budget lasts; raises
        TransientError (naming `what`) when it runs out, and any permanent error at once."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                wait = random.uniform(0, min(self.max_backoff_s, self.first_backoff_s * 2 ** (attempt - 1)))
                spent = time.monotonic() - started
                if spent + wait > self.budget_s:
                    raise TransientError(what, exc, attempt, spent) from exc
                RETRIES.add()
                time.sleep(wait)


READS = RetryPolicy(READ_BUDGET_S)  # what readers use (pipeline.layout.IndexLayout's default, grids, status)
