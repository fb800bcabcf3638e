"""On PYTHONPATH of one node of a test cluster (its raylet's env_vars): a worker there writes a shard's
first activations file, says so with a file in ACTINDEX_TEST_PAUSE_DIR, then hangs, so that the test can
remove the node while the shard is half written."""

import os

_FOLDER = os.environ.get("ACTINDEX_TEST_PAUSE_DIR")

if _FOLDER:
    try:
        import pipeline.writer as _writer
    except ImportError:  # a process of the node that does not run the project's code
        _writer = None
    if _writer is not None:
        _write = _writer.write_activations

        def _write_then_hang(table, path, metadata):
            import time

            _write(table, path, metadata)
            with open(os.path.join(_FOLDER, f"paused-{os.getpid()}"), "w") as f:
                f.write(str(path))
            time.sleep(3600)

        _writer.write_activations = _write_then_hang
