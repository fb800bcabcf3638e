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

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from actindex.jobs.spec import Executor, IndexRequest
from actindex.jobs.worker import ModelPlan, ShardFailure, ShardResult, ShardTask, WorkContext

MAX_SHARD_ATTEMPTS = 4  # attempts at one shard in one run, failed or lost (a decoder crash costs two)


class ShardAttemptsError(RuntimeError):
    """A shard failed MAX_SHARD_ATTEMPTS times in one run: the run stops (jobs.index says so in one line)."""

    def __init__(self, shard: int, attempts: int, error: str):
        self.shard, self.attempts, self.error = shard, attempts, error
        super().__init__(f"shard {shard} failed {attempts} times; the last time: {error}")


class Attempts:
    """Failed attempts per shard in this run."""

    def __init__(self):
        self.failed: Counter = Counter()

    def fail(self, shard: int, error: str) -> int:
        """Count one more failed attempt at `shard`; raises ShardAttemptsError when that was its last."""
        self.failed[shard] += 1
        if self.failed[shard] >= MAX_SHARD_ATTEMPTS:
            raise ShardAttemptsError(shard, self.failed[shard], error)
        return self.failed[shard]


class ShardExecutor(Protocol):
    name: str

    def gpus(self) -> bool:
        """Whether the workers have GPUs (what device "auto" resolves to)."""

    def plan(self, request: IndexRequest, geometry: bool = True) -> ModelPlan:
        """Load the request's model where the workers run (the driver never imports torch for a run
        that computes): what jobs.worker.plan_model finds. A worker keeps the loaded model."""

    def run(
        self, context: WorkContext, tasks: Iterable[ShardTask]
    ) -> Iterator[int | ShardResult | ShardFailure]:
        """Run every task; yield images done as they progress, each shard's result, and each failed attempt
        (the shard then runs again)."""

    def close(self) -> None: ...


@contextmanager
def open_executor(request: IndexRequest):
    if request.executor is Executor.local:
        from actindex.jobs.local import LocalExecutor

        executor = LocalExecutor()
    else:
        from actindex.jobs.ray_executor import RayExecutor

        executor = RayExecutor(request.address, request.workers, request.device)
    try:
        yield executor
    finally:
        executor.close()


class TaskQueue:
    """The shards still to hand out: taken from `tasks` one at a time (a generator over a listing too large
    to hold), and those given back (their worker was lost) first."""

    def __init__(self, tasks: Iterable[ShardTask]):
        self._tasks = iter(tasks)
        self._front: deque[ShardTask] = deque()

    def __bool__(self) -> bool:
        if not self._front:
            task = next(self._tasks, None)
            if task is not None:
                self._front.append(task)
        return bool(self._front)

    def popleft(self) -> ShardTask:
        if not self:
            raise IndexError("no task left")
        return self._front.popleft()

    def peek(self) -> ShardTask:
        """The task popleft() would give."""
        if not self:
            raise IndexError("no task left")
        return self._front[0]

    def appendleft(self, task: ShardTask) -> None:
        self._front.appendleft(task)
