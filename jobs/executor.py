"""Executors: who runs the shard workers. The local one is this process; the Ray one is actors on a
Ray cluster (a local Ray by default). Ray is imported only by jobs.ray_executor.

    with open_executor(request) as executor:       # Ray starts in the background from here
        plan = executor.plan(request)               # the model loaded where it runs: layers, weights, ...
        gpus = executor.gpus()                      # what "auto" resolves against
        for event in executor.run(context, tasks):  # ShardTasks, made as they are handed out
            ...   # int: images done (negative when a lost attempt's count is taken back); ShardResult

Both run the same jobs.worker.ShardWorker, with the same batches, so their tables are bit-identical
when the workers run torch on the same number of threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from actindex.jobs.spec import Executor, IndexRequest
from actindex.jobs.worker import ModelPlan, ShardResult, ShardTask, WorkContext


class ShardExecutor(Protocol):
    name: str

    def gpus(self) -> bool:
        """Whether the workers have GPUs (what device "auto" resolves to)."""

    def plan(self, request: IndexRequest, geometry: bool = True) -> ModelPlan:
        """Load the request's model where the workers run (the driver never imports torch for a run
        that computes): what jobs.worker.plan_model finds. A worker keeps the loaded model."""

    def run(self, context: WorkContext, tasks: Iterable[ShardTask]) -> Iterator[int | ShardResult]:
        """Run every task; yield images done as they progress, and each shard's result."""

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

    def appendleft(self, task: ShardTask) -> None:
        self._front.appendleft(task)
