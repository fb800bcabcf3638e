"""The index job: images -> per-unit maxima in Parquet, sharded, atomic, resumable, with top-k.

    from jobs.config import IndexConfig
    from jobs.index import run_index
    summary = run_index(IndexConfig(source="photos/", out="idx/", model="resnet18", layers=("layer4",)))

As a cluster batch job (same options as `actindex index`):
    ray job submit --working-dir . -- \\
        python -m jobs.index PHOTOS/ --model resnet50 --layers 'layer*' --out idx/

A run takes the index directory's lock, continues from the shards earlier runs completed (indexing only
images no completed shard holds), and rebuilds `topk` from every completed shard at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

import pipeline
from jobs.assemble import ShardAssembler
from jobs.config import IndexConfig
from jobs.finalize import reload_topk, write_topk
from jobs.incremental import plan_pending, prune, read_state, remove_orphans
from jobs.lock import IndexLock
from jobs.stages import StageSpec
from pipeline import schema
from pipeline.layers import LayerInfo, describe_layers, resolve_layers
from pipeline.models import load_model
from pipeline.preprocess import Preprocessing
from pipeline.receptive_field import ReceptiveField, compute_receptive_fields
from pipeline.shards import shard_batches
from pipeline.sources import ImageRef, dataset_root, display_path, list_images
from pipeline.topk import RunningTopK
from pipeline.writer import IndexLayout, ShardWriter, atomic_write_json, marker_totals, write_parquet

log = logging.getLogger("actindex")


class IndexMismatchError(RuntimeError):
    """The output directory holds an index made with other parameters, or is not an index."""


@dataclass
class Summary:
    images: int  # images in the index (ok + error)
    indexed: int  # images with status ok
    failed: int  # images with status error
    activation_rows: int  # rows in the activations table
    topk_rows: int  # rows in the topk table
    new_images: int  # images this run indexed
    shards_done_before: int  # shards reused from earlier runs
    missing: int  # indexed images no longer in the dataset (kept unless pruned)
    pruned: int  # images this run dropped because they left the dataset
    listing_errors: int  # folders that could not be listed (their images are not in the index)
    seconds: float  # wall time of this run
    startup_seconds: float  # from the start until the first batch came back (model loading, Ray start-up)
    steady_images_per_second: float | None  # images after the first batch / time after the first batch
    bytes_on_disk: int  # size of the index directory
    out: str  # the index directory

    @property
    def images_per_second(self) -> float:
        return (self.new_images / self.seconds) if self.seconds > 0 else 0.0


@dataclass
class JobPlan:
    listing_errors: list[str]  # folders that could not be listed (recorded in run.json, shown in the summary)
    refs: list[ImageRef]
    layers: list[str]
    infos: dict[str, LayerInfo]
    rfs: dict[str, ReceptiveField]
    preprocessing: Preprocessing
    params: dict

    @property
    def widths(self) -> dict[str, int]:
        return {layer: info.width for layer, info in self.infos.items()}


def plan_job(config: IndexConfig) -> JobPlan:
    """List images, load the model once in the driver, resolve layers and receptive fields."""
    listing_errors: list[tuple[str, str]] = []
    refs = list_images(config.source, errors=listing_errors)
    for relpath, reason in listing_errors:
        log.warning("not listed: %s (%s)", relpath, reason)
    loaded = load_model(config.model, config.weights, trust_code=config.trust_code)
    prep = config.preprocessing or loaded.preprocessing
    layers = resolve_layers(loaded.module, config.layers, config.model)
    size = (prep.crop, prep.crop)
    params = {
        "model": config.model,
        "weights": loaded.weights,
        "weights_sha256": loaded.weights_sha256,
        "layers": layers,
        "preprocessing": prep.to_dict(),
        "k": config.k,
        "shard_size": config.shard_size,
        "max_pixels": config.max_pixels,
        "precision": config.precision,
        "device_decode": config.device_decode,
        "dataset_root": dataset_root(config.source),
    }
    return JobPlan(
        listing_errors=[display_path(f"{relpath}: {reason}") for relpath, reason in listing_errors],
        refs=refs,
        layers=layers,
        infos=describe_layers(loaded.module, layers, size),
        rfs=compute_receptive_fields(loaded.module, layers, size),
        preprocessing=prep,
        params=json.loads(json.dumps(params)),  # the form it has when read back from run.json
    )


def check_manifest(layout: IndexLayout, params: dict, overwrite: bool) -> None:
    existing = layout.read_manifest()
    if existing is None:
        if layout.root.is_dir() and any(p.name != ".lock" for p in layout.root.iterdir()) and not overwrite:
            raise IndexMismatchError(
                f"{layout.root} is not empty and holds no actindex run.json; choose another --out"
            )
        return
    if existing.get("params") == params:
        return
    if not overwrite:
        changed = sorted(k for k in params if existing.get("params", {}).get(k) != params[k])
        raise IndexMismatchError(
            f"{layout.root} holds an index made with different {', '.join(changed)}; "
            "use another --out, or --overwrite to replace it"
        )
    layout.clear()


def run_index(config: IndexConfig) -> Summary:
    started = time.time()
    layout = IndexLayout(config.out)
    plan = plan_job(config)
    with IndexLock(layout.root):
        check_manifest(layout, plan.params, config.overwrite)
        manifest = _manifest(config, plan, started)
        atomic_write_json(layout.manifest, manifest)
        write_parquet(layers_table(plan), layout.layers, plan.params)
        return _run_locked(config, plan, layout, manifest, started)


def _run_locked(config: IndexConfig, plan: JobPlan, layout: IndexLayout, manifest: dict, started: float):
    state = read_state(layout)
    remove_orphans(layout, state)
    writer = ShardWriter(layout, plan.params)
    pending, missing = plan_pending(plan.refs, state, config.shard_size)
    pruned = 0
    if config.prune and missing:
        pruned = prune(layout, state, missing, writer)
        pending, _ = plan_pending(plan.refs, state, config.shard_size)  # numbered after the rewritten shards
    if pending or pruned:
        shutil.rmtree(layout.topk_dir, ignore_errors=True)  # stale from now on: rebuilt at the end
    done_before = dict(state.done)
    tops = {layer: RunningTopK(plan.infos[layer].channels, config.k) for layer in plan.layers}
    assembler = ShardAssembler(pending, plan.layers, plan.widths, writer, tops)
    new_images = sum(len(s.refs) for s in pending)
    first_batch: tuple[float, int] | None = None  # (when, images): the end of start-up
    with _progress(config.progress, new_images) as advance:
        for batch in _execute(config, plan, shard_batches(pending, batch_size(config))):
            first_batch = first_batch or (time.time(), len(batch["image_id"]))
            assembler.add(batch)
            advance(len(batch["image_id"]))
    loop_end = time.time()
    if assembler.pending():
        raise RuntimeError(f"shards {assembler.pending()} did not receive all their images")
    shutil.rmtree(layout.journal_dir, ignore_errors=True)  # every batch is done: no journal is needed
    for shard in done_before:
        for layer in plan.layers:
            reload_topk(layout, layer, shard, tops[layer], plan.widths[layer])
    markers = layout.completed_shards()
    topk_rows = write_topk(layout, markers, tops, plan.rfs, plan.widths, plan.preprocessing, plan.params)
    counts = {
        "listing_errors": len(plan.listing_errors),
        "new_images": new_images,
        "shards_done_before": len(done_before),
        "missing": 0 if config.prune else len(missing),
        "pruned": pruned,
        "startup_seconds": (first_batch[0] - started) if first_batch else 0.0,
        "steady_images_per_second": _rate(new_images - first_batch[1], loop_end - first_batch[0])
        if first_batch
        else None,
    }
    return _finish(layout, manifest, markers, topk_rows, counts, started)


GPU_BATCH, CPU_BATCH = 256, 32  # 256 keeps an H100 busy with ResNet-50 (see README); more buys little


def batch_size(config: IndexConfig) -> int:
    """The configured batch size, or one that fills the workers: GPU_BATCH where they have GPUs."""
    if config.batch_size:
        return config.batch_size
    if config.device == "cpu":
        return CPU_BATCH
    if config.executor == "ray":
        import ray

        from jobs.ray_runner import init_ray

        init_ray(config.address)
        return GPU_BATCH if ray.cluster_resources().get("GPU", 0) else CPU_BATCH
    import torch

    return GPU_BATCH if torch.cuda.is_available() else CPU_BATCH


def _execute(
    config: IndexConfig, plan: JobPlan, batches: list[list[dict]]
) -> Iterator[dict[str, np.ndarray]]:
    if not batches:
        return iter(())
    spec = StageSpec(
        config.model,
        config.weights,
        tuple(plan.layers),
        plan.preprocessing,
        config.device,
        max_pixels=config.max_pixels,
        trust_code=config.trust_code,
        journal_dir=str(IndexLayout(config.out).journal_dir),
        precision=config.precision,
        compile=config.compile,
        device_decode=config.device_decode,
    )
    if config.executor == "local":
        from jobs.local import run_local

        return run_local(batches, spec)
    from jobs.ray_runner import run_ray

    return run_ray(batches, spec, config.address, config.workers)


def _manifest(config: IndexConfig, plan: JobPlan, started: float) -> dict:
    return {
        "params": plan.params,
        "source": config.source,
        "dataset_images": len(plan.refs),
        "listing_errors": plan.listing_errors,
        "actindex_version": pipeline.__version__,
        "config": {k: v for k, v in asdict(config).items() if k not in ("preprocessing", "progress")},
        "started": _iso(started),
        "finished": None,
        "status": "running",
    }


def _rate(images: int, seconds: float) -> float | None:
    return images / seconds if images > 0 and seconds > 0 else None


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def layers_table(plan: JobPlan) -> pa.Table:
    rows = []
    for layer in plan.layers:
        info, rf = plan.infos[layer], plan.rfs[layer]
        rows.append(
            {
                "layer": layer,
                "type": info.type,
                "channels": info.channels,
                "height": info.height,
                "width": info.width,
                "rf_size_y": rf.size_y,
                "rf_size_x": rf.size_x,
                "rf_jump_y": rf.jump_y,
                "rf_jump_x": rf.jump_x,
                "rf_start_y": rf.start_y,
                "rf_start_x": rf.start_x,
                "rf_global": rf.is_global,
                **plan.preprocessing.to_dict(),
            }
        )
    return pa.Table.from_pylist(rows, schema=schema.LAYERS)


def _finish(layout: IndexLayout, manifest: dict, markers: dict, topk_rows: int, counts: dict, started: float):
    images, ok, activation_rows = marker_totals(markers)
    summary = Summary(
        images=images,
        indexed=ok,
        failed=images - ok,
        activation_rows=activation_rows,
        topk_rows=topk_rows,
        seconds=time.time() - started,
        bytes_on_disk=layout.bytes_on_disk(),
        out=str(layout.root),
        **counts,
    )
    totals = {k: v for k, v in asdict(summary).items() if k not in ("out", "bytes_on_disk")}
    atomic_write_json(
        layout.manifest, {**manifest, **totals, "finished": _iso(time.time()), "status": "complete"}
    )
    return summary


class _progress:
    """Rich progress bar with images/s (drawn on stderr); a no-op when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.bar.start()
        task = self.bar.add_task("index", total=self.total, rate="-")
        start = time.time()

        def advance(n: int) -> None:
            self.bar.advance(task, n)
            done = self.bar.tasks[0].completed
            self.bar.update(task, rate=f"{done / max(time.time() - start, 1e-9):.1f}")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


if __name__ == "__main__":
    from jobs.cli import app

    app(["index", *sys.argv[1:]])
