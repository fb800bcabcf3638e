"""One writer per index directory: an exclusive advisory lock that dies with its process.

    with IndexLock(Path("idx/")):
        ...   # a second job on idx/ raises IndexBusyError naming the holder

The kernel drops an flock when the holding process exits, however it exits (SIGKILL included), so a
killed job never leaves a stale lock. (flock is per host: on NFS without lock support, run one job per
index directory yourself.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pipeline.errors import UserError


class IndexBusyError(UserError, RuntimeError):
    """Another job holds the index directory's lock."""


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

    def __exit__(self, *exc) -> None:
        if self._file is None:
            return
        if self._created and [p.name for p in self.path.parent.iterdir()] == [".lock"]:
            self.path.unlink()  # while still holding the lock: nobody else can have started here
            self.path.parent.rmdir()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def is_locked(root: Path) -> str | None:
    """Who holds the lock on `root` right now, or None."""
    try:
        with IndexLock(root):
            return None
    except IndexBusyError as exc:
        return str(exc)


def _read_holder(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, since {since}"
