"""Executors: who runs the shard workers. The local one is this process; the Ray one is actors on a
Ray cluster (a local Ray by default). Ray is imported only by jobs.ray_executor.

    with open_executor(request) as executor:       # Ray starts in the background from here
        plan = executor.plan(request)               # the model loaded where it runs: layers, weights, ...
        gpus = executor.gpus()                      # what "auto" resolves against
        for event in executor.run(context, tasks):  # ShardTask list
            ...   # int: images done (negative when a lost attempt's count is taken back); ShardResult

Both run the same jobs.worker.ShardWorker, with the same batches, so their tables are bit-identical
when the workers run torch on the same number of threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from jobs.spec import Executor, IndexRequest
from jobs.worker import ModelPlan, ShardResult, ShardTask, WorkContext


class ShardExecutor(Protocol):
    name: str

    def gpus(self) -> bool:
        """Whether the workers have GPUs (what device "auto" resolves to)."""

    def plan(self, request: IndexRequest, geometry: bool = True) -> ModelPlan:
        """Load the request's model where the workers run (the driver never imports torch for a run
        that computes): what jobs.worker.plan_model finds. A worker keeps the loaded model."""

    def run(self, context: WorkContext, tasks: list[ShardTask]) -> Iterator[int | ShardResult]:
        """Run every task; yield images done as they progress, and each shard's result."""

    def close(self) -> None: ...


@contextmanager
def open_executor(request: IndexRequest):
    if request.executor is Executor.local:
        from jobs.local import LocalExecutor

        executor = LocalExecutor()
    else:
        from jobs.ray_executor import RayExecutor

        executor = RayExecutor(request.address, request.workers, request.device)
    try:
        yield executor
    finally:
        executor.close()
