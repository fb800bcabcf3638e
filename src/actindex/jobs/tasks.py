"""What every executor shares: the queue of shards to hand out, the count of failed attempts, and the
interface an executor offers (jobs.executor opens one; jobs.local and jobs.ray_executor are the two).

    queue, attempts = TaskQueue(tasks), Attempts()
    task = queue.popleft()          # shards made one at a time from a generator; given-back ones first
    attempts.fail(task.shard, err)  # ShardAttemptsError on the MAX_SHARD_ATTEMPTS-th failure of a shard
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import Protocol

from actindex.jobs.spec import IndexRequest
from actindex.jobs.worker import ModelPlan, ShardFailure, ShardResult, ShardTask, WorkContext

MAX_SHARD_ATTEMPTS = 4  # attempts at one shard in one run, failed or lost (a decoder crash costs two)


class ShardAttemptsError(RuntimeError):
    """A shard failed MAX_SHARD_ATTEMPTS times in one run: the run stops (jobs.indexing says so, in one
    line)."""

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


class TaskWorker(Protocol):
    """What an executor runs: the index's ShardWorker, or another job's worker (jobs.contributions)."""

    in_flight: int  # tasks it holds at once
    writer: dict  # host, pid (and Ray node) of its process

    def run_shard(self, task) -> Iterator:
        """Yield progress (ints), then the task's result, or a ShardFailure (the task runs again)."""

    def close(self) -> None: ...


class TaskContext(Protocol):
    """What every worker of a run needs (the index's WorkContext, ...): it makes the worker."""

    def worker(self, threads: int | None = None, node: str | None = None, module=None) -> TaskWorker: ...


class ShardExecutor(Protocol):
    name: str

    def gpus(self) -> bool:
        """Whether the workers have GPUs (what device "auto" resolves to)."""

    def cores(self) -> int:
        """The cores of a worker (the largest number, where workers differ): what the model's torch threads
        are resolved against (jobs.spec.model_threads)."""

    def plan(self, request: IndexRequest, geometry: bool = True) -> ModelPlan:
        """Load the request's model where the workers run (the driver never loads its weights: it only
        checks names on the meta device): what jobs.worker.plan_model finds. A worker keeps the model."""

    def run(
        self, context: WorkContext, tasks: Iterable[ShardTask]
    ) -> Iterator[int | ShardResult | ShardFailure]:
        """Run every task; yield images done as they progress, each shard's result, and each failed attempt
        (the shard then runs again)."""

    def close(self) -> None: ...


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
