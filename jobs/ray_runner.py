"""Ray Data executor: decode in CPU tasks, run the model in actors (one per GPU, or CPU actors).

    for out in run_ray(items, spec, batch_size=32, address=None, workers=None):
        ...   # the same column batches as jobs.local.run_local

With no address (and no RAY_ADDRESS) a local Ray starts; `ray job submit -- python -m jobs.index ...`
runs the same code on a cluster, where ray.init() joins it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy as np

from jobs.stages import RecordStage, StageSpec


DECODE_MEMORY = 256 * 2**20  # bytes reserved per decode task (a batch of decoded crops and its inputs)


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray Data's actors log a C++ notice about their own constructor arguments at error level; it is not ours.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local throwaway Ray; a cluster sets its own mode
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS"),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def actor_plan(workers: int | None) -> tuple[int, dict]:
    """(number of model actors, resources per actor) for the cluster Ray is connected to."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if gpus:
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    count = workers or 1
    # leave half the CPUs to the decode tasks that feed the actors
    return count, {"num_cpus": max(1, cpus // (2 * count))}


def run_ray(
    items: list[dict],
    spec: StageSpec,
    batch_size: int,
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    import ray.data

    init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards complete in order: bounded driver memory
    ctx.enable_progress_bars = False  # the job draws its own progress bar
    count, resources = actor_plan(workers)
    num_blocks = max(1, min(len(items) // batch_size, 10_000))
    ds = ray.data.from_items(items, override_num_blocks=num_blocks)
    # The memory reservation also keeps Ray from fusing decoding into the model actors (fusion needs
    # equal remote args): decoding stays in its own CPU tasks and overlaps the forward passes.
    ds = ds.map_batches(
        spec.decoder().decode_batch,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=1,
        memory=DECODE_MEMORY,
    )
    ds = ds.map_batches(
        RecordStage,
        fn_constructor_kwargs={
            "spec": spec,
            "threads": None if "num_gpus" in resources else resources["num_cpus"],
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=count,
        **resources,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
