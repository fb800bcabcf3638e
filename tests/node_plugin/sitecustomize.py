"""On PYTHONPATH of the nodes of a test cluster (a raylet's env_vars, or the environment of `ray start`).

ACTINDEX_TEST_PAUSE_DIR: a worker there writes its ACTINDEX_TEST_PAUSE_AFTER-th activations file (default:
the first), says so with a file in that folder, then hangs (and so does every later write), so that the
test can remove the node, or kill the job, while a shard is half written.

ACTINDEX_TEST_PAUSE_GROUPS: with ACTINDEX_TEST_PAUSE_DIR, a contributions worker writes that many group files,
says so with a file in that folder, then hangs, so that the test can kill the job mid-run.

ACTINDEX_TEST_BARRIER_DIR: a Ray worker there writes no activations file until ACTINDEX_TEST_BARRIER_COUNT
workers (on any node) have one to write, so that every node's model actor computes shards, whichever
actor starts first (the first ones hold their shards; the others take the rest of the queue).
"""

import os
import sys
import time

_FOLDER = os.environ.get("ACTINDEX_TEST_PAUSE_DIR")
_BARRIER = os.environ.get("ACTINDEX_TEST_BARRIER_DIR")
_BARRIER_WAIT_S = 300  # for a worker that never comes (the checks fail); a loaded machine takes minutes

if _FOLDER:
    try:
        import actindex.pipeline.layout as _writer
    except ImportError:  # a process of the node that does not run the project's code
        _writer = None
    if _writer is not None:
        _write = _writer.write_activations
        _after = int(os.environ.get("ACTINDEX_TEST_PAUSE_AFTER") or 1)
        _written = []  # list.append is atomic: finishing threads count without a lock

        def _write_then_hang(table, path, *args):
            _write(table, path, *args)
            _written.append(path)
            if len(_written) < _after:
                return
            with open(os.path.join(_FOLDER, f"paused-{os.getpid()}-{len(_written)}"), "w") as f:
                f.write(str(path))
            time.sleep(3600)

        _writer.write_activations = _write_then_hang

if _FOLDER and os.environ.get("ACTINDEX_TEST_PAUSE_GROUPS"):
    try:
        import actindex.pipeline.layout as _layout
    except ImportError:
        _layout = None
    if _layout is not None:
        _put = _layout.IndexLayout.put
        _groups = int(os.environ["ACTINDEX_TEST_PAUSE_GROUPS"])
        _written_groups = []

        def _put_then_hang(self, path, data):
            _put(self, path, data)
            if "contributions/" not in str(path) or "_contributions" in str(path):
                return
            _written_groups.append(path)
            if len(_written_groups) < _groups:
                return
            with open(os.path.join(_FOLDER, f"paused-{os.getpid()}-{len(_written_groups)}"), "w") as f:
                f.write(str(path))
            time.sleep(3600)

        _layout.IndexLayout.put = _put_then_hang

# only Ray's workers: its agents and dashboard processes need not import the project
if _BARRIER and sys.argv and sys.argv[0].endswith("default_worker.py"):
    try:
        import actindex.pipeline.layout as _writer
    except ImportError:
        _writer = None
    if _writer is not None:
        _write_first = _writer.write_activations
        _count = int(os.environ.get("ACTINDEX_TEST_BARRIER_COUNT", "2"))

        def _write_after_barrier(table, path, *args):
            with open(os.path.join(_BARRIER, f"worker-{os.getpid()}"), "w") as f:
                f.write(str(path))
            deadline = time.monotonic() + _BARRIER_WAIT_S
            while len(os.listdir(_BARRIER)) < _count and time.monotonic() < deadline:
                time.sleep(0.1)
            _write_first(table, path, *args)

        _writer.write_activations = _write_after_barrier
