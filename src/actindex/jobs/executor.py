"""Executors: who runs the shard workers. The local one is this process; the Ray one is actors on a
Ray cluster (a local Ray by default). Ray is imported only by jobs.ray_executor.

    with open_executor(request) as executor:       # Ray starts in the background from here
        plan = executor.plan(request)               # the model loaded where it runs: layers, weights, ...
        gpus = executor.gpus()                      # what "auto" resolves against
        for event in executor.run(context, tasks):  # ShardTasks, made as they are handed out
            ...   # int: images done (negative when a failed attempt's count is taken back); ShardResult;
                  # ShardFailure: an attempt failed, and the shard runs again

Both run the same jobs.worker.ShardWorker, with the same batches, so their tables are bit-identical
when the workers run torch on the same number of threads.

Failed attempts: a shard whose attempt failed transiently (a ShardFailure: the store or the disk kept
failing past the retry budget) or whose worker died (Ray) runs again, on another worker where there is
one, up to MAX_SHARD_ATTEMPTS attempts per shard per run; after that the run stops (ShardAttemptsError).
"""

from __future__ import annotations

from contextlib import contextmanager

from actindex.jobs.local import LocalExecutor
from actindex.jobs.ray_executor import RayExecutor
from actindex.jobs.spec import Executor, IndexRequest
from actindex.jobs.tasks import ShardExecutor


@contextmanager
def open_executor(request: IndexRequest):
    executor: ShardExecutor
    if request.executor is Executor.local:
        executor = LocalExecutor()
    else:
        executor = RayExecutor(request.address, request.workers, request.device)
    try:
        yield executor
    finally:
        executor.close()
