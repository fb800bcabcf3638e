"""The index job: images -> per-unit maxima in Parquet, sharded, atomic, with a manifest and top-k.

    from jobs.config import IndexConfig
    from jobs.index import run_index
    summary = run_index(IndexConfig(source="photos/", out="idx/", model="resnet18", layers=("layer4",)))

As a cluster batch job (same options as `actindex index`):
    ray job submit --working-dir . -- \
        python -m jobs.index PHOTOS/ --model resnet50 --layers 'layer*' --out idx/
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import pipeline
from jobs.config import IndexConfig
from jobs.stages import StageSpec
from pipeline import schema
from pipeline.layers import LayerInfo, describe_layers, resolve_layers
from pipeline.models import load_model
from pipeline.preprocess import Preprocessing
from pipeline.receptive_field import ReceptiveField, boxes, compute_receptive_fields
from pipeline.shards import Shard, plan_shards, shard_batches
from pipeline.sources import dataset_root, list_images
from pipeline.topk import RunningTopK
from pipeline.writer import (
    IndexLayout,
    ShardWriter,
    activations_table,
    atomic_write_json,
    write_parquet,
)


class IndexMismatchError(RuntimeError):
    """The output directory holds an index made with other parameters."""


@dataclass
class Summary:
    images: int  # images in the dataset
    indexed: int  # images with status ok
    failed: int  # images with status error
    activation_rows: int  # rows in the activations table
    topk_rows: int  # rows in the topk table
    shards_done_before: int  # shards reused from an earlier run
    seconds: float  # wall time of this run
    bytes_on_disk: int  # size of the index directory
    out: str  # the index directory

    @property
    def images_per_second(self) -> float:
        return (self.images / self.seconds) if self.seconds > 0 else 0.0


@dataclass
class _Plan:
    layers: list[str]
    infos: dict[str, LayerInfo]
    rfs: dict[str, ReceptiveField]
    preprocessing: Preprocessing
    shards: list[Shard]
    params: dict


def plan_job(config: IndexConfig) -> _Plan:
    """List images, load the model once in the driver, resolve layers and receptive fields."""
    refs = list_images(config.source)
    loaded = load_model(config.model, config.weights)
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
        "dataset_root": dataset_root(config.source),
    }
    return _Plan(
        layers=layers,
        infos=describe_layers(loaded.module, layers, size),
        rfs=compute_receptive_fields(loaded.module, layers, size),
        preprocessing=prep,
        shards=plan_shards(refs, config.shard_size),
        params=json.loads(json.dumps(params)),  # the form it has when read back from run.json
    )


def check_manifest(layout: IndexLayout, params: dict, overwrite: bool) -> None:
    existing = layout.read_manifest()
    if existing is None:
        if layout.root.is_dir() and any(layout.root.iterdir()) and not overwrite:
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


class ShardAssembler:
    """Collects result batches per shard; writes each shard as soon as all its images are in."""

    def __init__(self, plan: _Plan, writer: ShardWriter, tops: dict[str, RunningTopK]):
        self.plan = plan
        self.writer = writer
        self.tops = tops
        self.shards = {shard.index: shard for shard in plan.shards}
        self.parts: dict[int, list[dict]] = defaultdict(list)
        self.seen: dict[int, set] = defaultdict(set)
        self.activation_rows = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        shard_ids = np.asarray(batch["shard"])
        for shard in np.unique(shard_ids):
            rows = {key: value[shard_ids == shard] for key, value in batch.items()}
            self._add_rows(int(shard), rows)

    def _add_rows(self, shard: int, rows: dict[str, np.ndarray]) -> None:
        new_ids = set(rows["image_id"].tolist())
        if new_ids & self.seen[shard]:
            raise RuntimeError(f"shard {shard} received an image twice; refusing to write duplicates")
        self.seen[shard] |= new_ids
        self.parts[shard].append(rows)
        if len(self.seen[shard]) == len(self.shards[shard].refs):
            self._finish(shard)

    def pending(self) -> list[int]:
        return sorted(self.parts)

    def _finish(self, shard: int) -> None:
        parts = self.parts.pop(shard)
        rows = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        rank = {ref.image_id: i for i, ref in enumerate(self.shards[shard].refs)}
        order = np.argsort([rank[i] for i in rows["image_id"].tolist()])
        rows = {key: value[order] for key, value in rows.items()}
        ok = rows["ok"].astype(bool)
        tables = {}
        for i, layer in enumerate(self.plan.layers):
            act, pos = rows[f"act_{i}"][ok], rows[f"pos_{i}"][ok]
            tables[layer] = activations_table(
                layer, rows["image_id"][ok], act, pos, self.plan.infos[layer].width
            )
            self.tops[layer].add(act, rows["image_id"][ok], pos)
        self.writer.write_shard(shard, self.shards[shard].digest, images_table(rows), tables)
        self.activation_rows += sum(t.num_rows for t in tables.values())


def images_table(rows: dict[str, np.ndarray]) -> pa.Table:
    ok = rows["ok"].astype(bool)
    labels = [None if label is None or label != label else str(label) for label in rows["label"].tolist()]
    return pa.table(
        {
            "image_id": rows["image_id"].astype(np.int64),
            "uri": rows["uri"].astype(str),
            "relpath": rows["relpath"].astype(str),
            "width": rows["width"].astype(np.int32),
            "height": rows["height"].astype(np.int32),
            "label": labels,
            "status": np.where(ok, "ok", "error"),
            "error": [
                None if good else str(err) for good, err in zip(ok, rows["error"].tolist(), strict=True)
            ],
            "shard": rows["shard"].astype(np.int32),
        },
        schema=schema.IMAGES,
    )


def run_index(config: IndexConfig) -> Summary:
    started = time.time()
    layout = IndexLayout(config.out)
    plan = plan_job(config)
    check_manifest(layout, plan.params, config.overwrite)
    manifest = _manifest(config, plan, started)
    atomic_write_json(layout.manifest, manifest)
    write_parquet(layers_table(plan), layout.layers, plan.params)

    done = {s: m for s, m in layout.completed_shards().items() if _marker_valid(m, plan.shards)}
    pending = [shard for shard in plan.shards if shard.index not in done]
    tops = {layer: RunningTopK(plan.infos[layer].channels, config.k) for layer in plan.layers}
    assembler = ShardAssembler(plan, ShardWriter(layout, plan.params), tops)
    batches = shard_batches(pending, config.batch_size)
    total = sum(len(s.refs) for s in plan.shards)
    with _progress(config.progress, total, total - sum(len(s.refs) for s in pending)) as advance:
        for batch in _execute(config, plan, batches):
            assembler.add(batch)
            advance(len(batch["image_id"]))
    if assembler.pending():
        raise RuntimeError(f"shards {assembler.pending()} did not receive all their images")

    for shard in done:
        _reload_topk(layout, plan, shard, tops)
    topk_rows = write_topk(layout, plan, tops)
    return _finish(layout, manifest, plan, topk_rows, len(done), started)


def _execute(config: IndexConfig, plan: _Plan, batches: list[list[dict]]) -> Iterator[dict[str, np.ndarray]]:
    if not batches:
        return iter(())
    spec = StageSpec(config.model, config.weights, tuple(plan.layers), plan.preprocessing, config.device)
    if config.executor == "local":
        from jobs.local import run_local

        return run_local(batches, spec)
    from jobs.ray_runner import run_ray

    return run_ray(batches, spec, config.address, config.workers)


def _marker_valid(marker: dict, shards: list[Shard]) -> bool:
    index = marker["shard"]
    return index < len(shards) and shards[index].digest == marker["digest"]


def _manifest(config: IndexConfig, plan: _Plan, started: float) -> dict:
    return {
        "params": plan.params,
        "source": config.source,
        "images": sum(len(s.refs) for s in plan.shards),
        "shards": len(plan.shards),
        "actindex_version": pipeline.__version__,
        "config": {k: v for k, v in asdict(config).items() if k not in ("preprocessing", "progress")},
        "started": _iso(started),
        "finished": None,
        "status": "running",
    }


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def layers_table(plan: _Plan) -> pa.Table:
    prep = plan.preprocessing
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
                **{k: v for k, v in prep.to_dict().items()},
            }
        )
    return pa.Table.from_pylist(rows, schema=schema.LAYERS)


def _reload_topk(layout: IndexLayout, plan: _Plan, shard: int, tops: dict[str, RunningTopK]) -> None:
    """Fold a shard finished by an earlier run into the top-k, from its activations file."""
    for layer in plan.layers:
        table = pq.read_table(
            layout.activations_file(layer, shard), columns=["image_id", "unit", "act", "y", "x"]
        )
        ids, inverse = np.unique(table.column("image_id").to_numpy(), return_inverse=True)
        units = table.column("unit").to_numpy()
        act = np.full((len(ids), plan.infos[layer].channels), np.nan, dtype=np.float32)
        pos = np.zeros(act.shape, dtype=np.int32)
        act[inverse, units] = table.column("act").to_numpy()
        width = plan.infos[layer].width
        pos[inverse, units] = (
            table.column("y").to_numpy().astype(np.int32) * width + table.column("x").to_numpy()
        )
        tops[layer].add(act, ids, pos)


def image_sizes(layout: IndexLayout) -> tuple[np.ndarray, np.ndarray]:
    """(sorted image_ids, (N, 2) width/height) of every image of the completed shards."""
    files = [
        layout.root / f
        for m in layout.completed_shards().values()
        for f in m["files"]
        if f.startswith("images")
    ]
    table = pa.concat_tables(pq.read_table(f, columns=["image_id", "width", "height"]) for f in files)
    order = np.argsort(table.column("image_id").to_numpy())
    sizes = np.stack([table.column("width").to_numpy(), table.column("height").to_numpy()], axis=1)
    return table.column("image_id").to_numpy()[order], sizes[order]


def write_topk(layout: IndexLayout, plan: _Plan, tops: dict[str, RunningTopK]) -> int:
    ids_sorted, sizes = image_sizes(layout)
    rows = 0
    for layer in plan.layers:
        table = topk_table(layer, tops[layer], plan.rfs[layer], plan.infos[layer].width)
        image_rows = np.searchsorted(ids_sorted, table.column("image_id").to_numpy())
        box = plan.preprocessing.to_original(
            np.stack([table.column(c).to_numpy() for c in ("x0", "y0", "x1", "y1")], axis=1),
            sizes[image_rows, 0],
            sizes[image_rows, 1],
        )
        for j, name in enumerate(("x0", "y0", "x1", "y1")):
            table = table.set_column(
                table.schema.get_field_index(name), schema.TOPK.field(name), pa.array(box[:, j])
            )
        write_parquet(table, layout.topk_file(layer), plan.params)
        rows += table.num_rows
    return rows


def topk_table(layer: str, top: RunningTopK, rf: ReceptiveField, width: int) -> pa.Table:
    """Top-k rows with boxes in model-input pixels (mapped to original pixels by write_topk)."""
    valid = ~np.isnan(top.values)
    unit_idx, rank_idx = np.nonzero(valid)
    pos = top.positions[valid]
    y, x = pos // width, pos % width
    model_boxes = boxes(rf, y, x)
    return pa.table(
        {
            "layer": pa.repeat(pa.scalar(layer), len(unit_idx)),
            "unit": unit_idx.astype(np.int32),
            "rank": (rank_idx + 1).astype(np.int32),
            "image_id": top.image_ids[valid],
            "act": top.values[valid],
            "y": y.astype(np.int16),
            "x": x.astype(np.int16),
            "x0": model_boxes[:, 0].astype(np.int32),
            "y0": model_boxes[:, 1].astype(np.int32),
            "x1": model_boxes[:, 2].astype(np.int32),
            "y1": model_boxes[:, 3].astype(np.int32),
        },
        schema=schema.TOPK,
    )


def _finish(layout, manifest, plan, topk_rows, done_before, started) -> Summary:
    markers = layout.completed_shards()
    images = sum(m["images"] for m in markers.values())
    ok = sum(m["ok"] for m in markers.values())
    summary = Summary(
        images=images,
        indexed=ok,
        failed=images - ok,
        activation_rows=sum(m["activation_rows"] for m in markers.values()),
        topk_rows=topk_rows,
        shards_done_before=done_before,
        seconds=time.time() - started,
        bytes_on_disk=sum(p.stat().st_size for p in layout.root.rglob("*") if p.is_file()),
        out=str(layout.root),
    )
    counts = {k: v for k, v in asdict(summary).items() if k not in ("out", "seconds", "bytes_on_disk")}
    atomic_write_json(
        layout.manifest, {**manifest, **counts, "finished": _iso(time.time()), "status": "complete"}
    )
    return summary


class _progress:
    """Rich progress bar with images/s (drawn on stderr); a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.enabled, self.total, self.completed = enabled, total, completed

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
        task = self.bar.add_task("index", total=self.total, completed=self.completed, rate="-")
        start, base = time.time(), self.completed

        def advance(n: int) -> None:
            self.bar.advance(task, n)
            done = self.bar.tasks[0].completed - base
            self.bar.update(task, rate=f"{done / max(time.time() - start, 1e-9):.1f}")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


if __name__ == "__main__":
    from jobs.cli import app

    app(["index", *sys.argv[1:]])
