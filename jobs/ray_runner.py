"""Ray Data executor: decode in CPU tasks, run the model in actors (one per GPU, or CPU actors).

    for out in run_ray(shard_batches(shards, 32), spec, address=None, workers=None):
        ...   # the same column batches as jobs.local.run_local

With no address (and no RAY_ADDRESS) a local Ray starts; `ray job submit -- python -m jobs.index ...`
runs the same code on a cluster, where ray.init() joins it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import numpy as np

from jobs.local import columns
from jobs.stages import JournaledDecode, RecordStage, StageSpec

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


def actor_plan(workers: int | None) -> tuple[int, dict, int | None]:
    """(model actors, Ray resources per actor, torch threads per actor) for the connected cluster.

    GPU clusters: one actor per GPU. CPU clusters: one actor per node unless `workers` says otherwise,
    each reserving one CPU but running torch on its node's share of cores: decoding costs a few percent of
    a forward pass, so the decode tasks that share those cores barely slow it, and a forward limited to
    its one reserved core would be the bottleneck.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}, None
    count = workers or max(1, len(nodes))
    cores = min(int(n["Resources"].get("CPU", 1)) for n in nodes) if nodes else 1
    per_node = math.ceil(count / max(1, len(nodes)))  # actors sharing one node's cores
    return count, {"num_cpus": 1}, max(1, cores // per_node)


class DecodeGroup:
    """Decode stage over dataset rows that each hold one whole batch (lists of the batch's items)."""

    def __init__(self, spec: StageSpec):
        self.decode = JournaledDecode(spec)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        flat = {key: [v for row in values for v in row] for key, values in rows.items()}
        items = [dict(zip(flat, values, strict=True)) for values in zip(*flat.values(), strict=True)]
        return self.decode(columns(items))


def run_ray(
    batches: list[list[dict]], spec: StageSpec, address: str | None = None, workers: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    import ray.data

    init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards complete in order: bounded driver memory
    ctx.enable_progress_bars = False  # the job draws its own progress bar
    count, resources, threads = actor_plan(workers)
    # One dataset row per batch, one block per row: the model sees exactly the batches the plain loop sees.
    rows = [{key: [item[key] for item in batch] for key in batch[0]} for batch in batches]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # The memory reservation also keeps Ray from fusing decoding into the model actors (fusion needs
    # equal remote args): decoding stays in its own CPU tasks and overlaps the forward passes.
    ds = ds.map_batches(
        DecodeGroup(spec), batch_size=1, batch_format="numpy", num_cpus=1, memory=DECODE_MEMORY
    )
    ds = ds.map_batches(
        RecordStage,
        fn_constructor_kwargs={"spec": spec, "threads": threads},
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=count),
        **resources,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
