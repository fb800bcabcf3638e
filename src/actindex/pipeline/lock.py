"""One writer per index: an flock on a local directory, a lease object on an object store.

    with index_lock(IndexLayout("idx/")) as lock:     # or IndexLayout("s3://bkt/idx/")
        ...            # a second job on the index raises IndexBusyError naming the holder
        lock.check()   # before each commit: raises LeaseLostError if another job took the index over

Local: the kernel drops an flock when the holding process exits, however it exits (SIGKILL included), so a
killed job never leaves a stale lock. (flock is per host: on NFS without lock support, run one job per
index directory yourself.)

Object store (S3): the lock is the object `.lock`, created with a conditional put (If-None-Match: *), so
of two jobs starting together exactly one creates it. It holds the holder's host, pid and process start
time and an expiry LEASE_SECONDS ahead, which a background thread renews every RENEW_SECONDS with a put
conditional on the object being unchanged since its last renewal (If-Match: its ETag). Another job takes
the lease over only when it has expired, or when its holder ran on the same host and that process is
gone (a killed job resumed on the same machine waits for nothing); the takeover is itself conditional, so
two jobs cannot both take it over. A holder whose renewal finds the lease taken stops before its next
commit (LeaseLostError). What is not guaranteed: clocks that differ across hosts by more than the lease's
slack (SKEW_SECONDS), and a holder paused for longer than the lease between its check and a commit.

Every request is retried when it fails transiently (pipeline.retry). A conditional write whose first
attempt was applied but whose reply was lost answers 412 when it is sent again; so before a 412 means
"another job", the lease object is read, and when it holds this lease's own `holder` id (a random token
per lease), the write succeeded and its ETag is adopted. A renewal that fails transiently is retried until
the lease's slack (LEASE_SECONDS - RENEW_SECONDS after the last renewal) is spent, then by the next tick.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from actindex.pipeline.errors import UserError
from actindex.pipeline.retry import RetryPolicy
from actindex.pipeline.storage import user_errors

log = logging.getLogger("actindex")


class IndexBusyError(UserError, RuntimeError):
    """Another job holds the index directory's lock."""


class LeaseLostError(UserError, RuntimeError):
    """Another job took this job's lease on an index on an object store over."""


def index_lock(layout):
    """The lock of an index: IndexLock on a local directory, ObjectLease on an object store (its requests
    retried with the layout's policy)."""
    return ObjectLease(layout) if layout.remote else IndexLock(layout.root)


def is_locked(layout) -> str | None:
    """Who holds the lock on the index right now, or None."""
    if layout.remote:
        return ObjectLease(layout).holder()
    if not layout.root.is_dir():
        return None
    try:
        with IndexLock(layout.root):
            return None
    except IndexBusyError as exc:
        return str(exc)


class IndexLock:
    """The lock; a directory it had to create is removed again if the job leaves nothing else in it (a
    job that stops at a bad option leaves no empty index directory behind)."""

    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"
        self._file = None
        self._created = False

    def __enter__(self) -> IndexLock:
        try:
            self._created = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as exc:
            raise UserError(
                f"cannot write the index directory {self.path.parent}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            handle.close()
            raise IndexBusyError(
                f"{self.path.parent} is being written by another job ({holder}); "
                "wait for it to finish or stop it, then rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        self._file = handle
        return self

    def check(self) -> None:
        """An flock cannot be taken over while its process lives."""

    def __exit__(self, *exc) -> None:
        if self._file is None:
            return
        if self._created and [p.name for p in self.path.parent.iterdir()] == [".lock"]:
            self.path.unlink()  # while still holding the lock: nobody else can have started here
            self.path.parent.rmdir()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def _read_holder(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return "holder unknown"
    return _describe(info)


LEASE_SECONDS = 60.0  # how long a lease lasts without renewal
RENEW_SECONDS = 10.0  # how often its holder renews it
SKEW_SECONDS = 10.0  # slack for clocks of different hosts: a lease is taken over this long after it expired


class ObjectLease:
    """The one-writer lock of an index on an object store (see the module docstring)."""

    def __init__(self, layout):
        if layout.protocol not in ("s3", "s3a"):
            raise UserError(
                f"cannot write an index to {layout.protocol}://: its one-writer lock needs S3's conditional "
                "writes; write to s3:// or a local directory (reading other stores works)"
            )
        self.fs, self.layout = layout.fs, layout
        self.retry: RetryPolicy = layout.retry
        self.bucket, _, self.key = str(layout.root / ".lock").partition("/")
        self.token = uuid.uuid4().hex  # this lease's holder id: tells its own writes from another job's
        self.etag: str | None = None
        self.lost: str | None = None
        self.since = self.renewed = time.time()  # the job's start, and the lease's last successful put
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ObjectLease:
        with user_errors(self.layout.url):
            self._acquire()  # a store that stays down: TransientError, told as "cannot reach the store"
        self._thread = threading.Thread(target=self._renew_every, name="actindex-lease", daemon=True)
        self._thread.start()
        return self

    def _acquire(self) -> None:
        try:
            self.etag = self._put(IfNoneMatch="*")
            return
        except OSError as exc:
            if not _precondition_failed(exc):
                raise
        etag, holder = self._read()
        if holder is not None and _alive(holder):
            raise IndexBusyError(
                f"{self.layout.url} is being written by another job ({_describe(holder)}, lease until "
                f"{_clock(holder['expires'])}); wait for it to finish or stop it, then rerun"
            )
        try:  # expired, or its holder is gone: take it over, unless another job just did
            self.etag = self._put(IfMatch=etag) if etag else self._put(IfNoneMatch="*")
        except OSError as exc:
            if _precondition_failed(exc):
                raise IndexBusyError(
                    f"{self.layout.url} was just taken by another job; rerun later"
                ) from None
            raise
        log.warning("took over the lease of %s from %s", self.layout.url, _describe(holder or {}))

    def holder(self) -> str | None:
        """The job holding the lease, described, or None (no lease, or an expired one)."""
        with user_errors(self.layout.url):
            _, holder = self._read()
        if holder is None or not _alive(holder):
            return None
        return f"{_describe(holder)}, lease until {_clock(holder['expires'])}"

    def check(self) -> None:
        unrenewed = time.time() - self.renewed
        if not self.lost and unrenewed > LEASE_SECONDS - RENEW_SECONDS:  # it may expire before the commit
            self.lost = f"the lease on {self.layout.url} could not be renewed for {unrenewed:.0f} s"
        if self.lost:
            raise LeaseLostError(
                f"stopped: {self.lost}; completed shards are kept, rerun when the other job is done"
            )

    def renew(self) -> None:
        """Push the lease's expiry on, if it is still ours; otherwise record that it was lost. Transient
        failures are retried within the lease's slack; after that the next tick tries again."""
        if self.lost:
            return
        slack = LEASE_SECONDS - RENEW_SECONDS - (time.time() - self.renewed)
        policy = RetryPolicy(max(0.0, min(self.retry.budget_s, slack)))
        try:
            self.etag = self._put(policy, IfMatch=self.etag)
            self.renewed = time.time()
        except Exception as exc:  # noqa: BLE001 - recorded; check() stops the job before its next commit
            if _precondition_failed(exc):
                self.lost = f"another job took over the lease on {self.layout.url}"
                log.error("%s", self.lost)
            else:
                log.warning("could not renew the lease on %s (%s); retrying", self.layout.url, exc)

    def _renew_every(self) -> None:
        while not self._stop.wait(RENEW_SECONDS) and not self.lost:
            self.renew()

    def _put(self, policy: RetryPolicy | None = None, **condition) -> str:
        """Write the lease if `condition` holds; its new ETag. A 412 after a retried attempt may be this
        lease's own write, applied with its reply lost: then the object holds our token and is ours."""
        policy = policy or self.retry
        body = json.dumps({**_me(self.since), "holder": self.token, "expires": time.time() + LEASE_SECONDS})
        try:
            return policy.call(self._put_once, body.encode(), what=self._url, **condition)
        except OSError as exc:
            if not _precondition_failed(exc):
                raise
            etag, holder = self._read()
            if etag is None or (holder or {}).get("holder") != self.token:
                raise
            log.info("the lease write on %s was applied; only its reply was lost", self.layout.url)
            return etag

    def _put_once(self, body: bytes, **condition) -> str:
        reply = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)
        return reply["ETag"]

    @property
    def _url(self) -> str:
        return f"{self.layout.protocol}://{self.bucket}/{self.key}"

    def _read(self) -> tuple[str | None, dict | None]:
        """(ETag, contents) of the lease object, or (None, None). The ETag is read first: contents newer
        than it make a takeover conditional on it fail, never succeed wrongly."""
        try:
            etag = self.retry.call(
                self.fs.call_s3, "head_object", Bucket=self.bucket, Key=self.key, what=self._url
            )["ETag"]
            holder = json.loads(
                self.retry.call(self.fs.cat_file, f"{self.bucket}/{self.key}", what=self._url)
            )
        except FileNotFoundError:
            return None, None
        return etag, holder

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost or self.etag is None:
            return
        try:
            self._release()
        except Exception as error:  # noqa: BLE001 - the lease then expires by itself
            log.warning(
                "could not release the lease on %s (%s); it expires by itself", self.layout.url, error
            )

    def _release(self) -> None:
        """Delete the lease if it is still ours. A retried delete whose first attempt was applied finds
        the object gone (or, after another job took it, not ours): either way there is nothing to do."""
        try:
            self.retry.call(
                self.fs.call_s3, "delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag,
                what=self._url,
            )  # fmt: skip
        except (FileNotFoundError, OSError) as exc:
            if not (isinstance(exc, FileNotFoundError) or _precondition_failed(exc)):
                raise


def _precondition_failed(exc: BaseException) -> bool:
    """A conditional put or delete refused (HTTP 412; s3fs raises FileExistsError for If-None-Match)."""
    text = str(exc).lower()
    return isinstance(exc, FileExistsError) or "pre-condition" in text or "precondition" in text


def _me(since: float) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "since": since}


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), which tells it from a later process with its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether a lease still binds: not expired (with slack for clocks), and, when its holder ran on this
    host, that process still running."""
    if time.time() > holder.get("expires", 0) + SKEW_SECONDS:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    start = _start_time(holder.get("pid", -1))
    return start is not None and (holder.get("start") is None or start == holder["start"])


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {_clock(holder.get('since', 0))}"


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
