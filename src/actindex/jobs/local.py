"""The executor without Ray: one ShardWorker in this process, several shards in flight.

    executor = LocalExecutor()
    for event in executor.run(context, tasks):
        ...   # int (images done) or ShardResult

Used by `actindex index --executor local`, by GPU machines without Ray, and for debugging. One thread
runs the model over a shard while the next one decodes ahead and earlier ones are finished (ordering,
encoding, writing) in the worker's finishing threads, so encoding overlaps the forward passes.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from actindex.jobs.spec import available_cores
from actindex.jobs.tasks import Attempts, TaskQueue
from actindex.jobs.worker import (
    ModelPlan,
    ShardFailure,
    ShardResult,
    ShardTask,
    WorkContext,
    plan_model,
)

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class LocalExecutor:
    name = "local"

    def __init__(self):
        self.module = None

    def gpus(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def cores(self) -> int:
        return available_cores()

    def plan(self, request, geometry: bool = True) -> ModelPlan:
        plan, self.module = plan_model(request, geometry)  # the worker uses this copy: no second load
        return plan

    def run(
        self, context: WorkContext, tasks: Iterable[ShardTask]
    ) -> Iterator[int | ShardResult | ShardFailure]:
        worker = context.worker(module=self.module)
        events: queue.Queue = queue.Queue()
        pending, running, attempts = TaskQueue(tasks), 0, Attempts()
        by_shard: dict[int, ShardTask] = {}

        def work(task: ShardTask) -> None:
            try:
                for event in worker.run_shard(task):
                    events.put(event)
                events.put(_DONE)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                events.put(_Failed(exc))

        with ThreadPoolExecutor(worker.in_flight, thread_name_prefix="actindex-shard") as threads:
            try:
                while pending or running:
                    while pending and running < worker.in_flight:
                        task = pending.popleft()
                        by_shard[task.shard] = task
                        threads.submit(work, task)
                        running += 1
                    event = _next(events)
                    if event is _DONE:
                        running -= 1
                    elif isinstance(event, _Failed):
                        raise event.exc
                    elif isinstance(event, ShardFailure):  # the same shard again, next (one worker here)
                        attempts.fail(event.shard, event.error)
                        pending.appendleft(by_shard[event.shard])
                        yield -event.images
                        yield event
                    else:
                        yield event
            finally:
                worker.close()  # a shard still running stops after its current batch

    def close(self) -> None:
        pass


def _next(events: queue.Queue):
    """The next event; waits in short steps so that Ctrl-C reaches the main thread at once."""
    while True:
        try:
            return events.get(timeout=0.2)
        except queue.Empty:
            continue
