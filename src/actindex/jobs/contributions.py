"""`actindex contributions IDX --layer L --from L'`: which units of a lower layer build each unit, as a table.

    summary = run_contributions(ContributionsRequest(index="idx/", layer="layer4", source="layer3"))
    actindex.open("idx/").contributions("layer4", 17)    # its strongest layer3 channels, best first

For unit u of layer L and channel c of the lower layer L', on one of u's top images with u's peak at p:
    score(u, c) = sum over positions q of A_c(q) * d u(p) / d A_c(q)
averaged over u's top-k images (the index's topk table), with A the output of L' on that image and the
plain gradient (pipeline.attribution.contributions, which also says what it equals: for L' feeding L
through one convolution and a ReLU, with u positive at p, score(u, c) is exactly channel c's term of u's
pre-activation, and the scores add up to u's value minus its bias). The `--top` channels of largest
|score| are kept, with share = score / the sum of |score| over every channel of L', and rank.

The job. The model is the index's, loaded with its recorded weights (pipeline.models.index_model: weights
changed since indexing are refused in one line); the top images are decoded with the index's preprocessing.
L's units are split into groups by unit number (group g: units g*GROUP_UNITS to (g+1)*GROUP_UNITS - 1,
those asked for), one task each, on the index job's executors (`--executor local|ray`, jobs.executor): a
group's images go through the model in one forward pass, with one backward pass per unit sharing an image
(so one per group where the units' top images differ), never one per (unit, image). Its table is written
under a name unique to the attempt, `contributions/layer=<L>/from=<L'>/group-NNNNN.<attempt>.parquet`, and
committed by the driver's marker `_contributions/layer=<L>/from=<L'>/group-NNNNN.json`, last: a killed run
resumes where it stopped, a rerun with nothing to do does nothing, and readers (the `contributions` view)
only see committed groups. `record.json` beside the markers holds what the groups were computed with (k,
top, the weights' hash, the topk table's shards): a rerun asking for another k or top refuses (or, with
--overwrite, starts again); one after the index changed (new images, so new top images) recomputes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from actindex.jobs.executor import open_executor
from actindex.jobs.spec import (
    ADDRESS,
    DEVICE,
    EXECUTOR,
    PROGRESS,
    RETRY_BUDGET,
    WORKERS,
    Device,
    Executor,
)
from actindex.jobs.worker import ShardFailure
from actindex.pipeline import schema
from actindex.pipeline.attribution.contributions import contributions
from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.decode import Decoder
from actindex.pipeline.errors import InvalidInputError, UnknownNameError, UserError
from actindex.pipeline.layout import IndexLayout, encode_parquet, new_attempt, topk_record
from actindex.pipeline.lock import index_lock
from actindex.pipeline.model_args import TRUST_CODE
from actindex.pipeline.models import index_model
from actindex.pipeline.options import Option, check
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.retry import (
    DEFAULT_BUDGET_S,
    RETRIES,
    RetryPolicy,
    TransientError,
    describe,
    is_transient,
)
from actindex.pipeline.sources import path_from_display
from actindex.pipeline.topk import K
from actindex.queries.db import INDEX, unit_tops
from actindex.queries.grid import unit_list

log = logging.getLogger("actindex")
GROUP_UNITS = 16  # units per task: their top images go through the model in one forward pass
TOP = Option("Source channels kept per unit, those of largest |score|.", min=1, unit="channel")


class ContributionsMismatchError(UserError, RuntimeError):
    """The index holds contributions computed with other parameters (k, top)."""


@dataclass
class ContributionsRequest:
    """A contributions job as the user asked for it: the arguments and options of `actindex contributions`
    (pipeline.options)."""

    index: str = INDEX.field()
    layer: str = Option("The layer whose units are explained, as indexed.", flags=("--layer", "-l")).field()
    source: str | None = Option(
        "The lower layer whose channels build them: any module of the model (default: the indexed layer "
        "just below --layer).",
        flags=("--from",),
    ).field(None)
    units: tuple[int, ...] | None = Option(
        "Units to explain, e.g. 0-15,282 (default: every unit of the layer).", parse=unit_list
    ).field(None)
    k: int = K.field(9, help="Top images per unit the scores are averaged over.")
    top: int = TOP.field(16)
    executor: Executor = EXECUTOR.field(Executor.ray)
    address: str | None = ADDRESS.field(None)
    device: Device = DEVICE.field(Device.auto)
    workers: int | None = WORKERS.field(None)
    overwrite: bool = Option("Replace contributions computed with another k or top.").field(False)
    trust_code: bool = TRUST_CODE.field(False)
    progress: bool = PROGRESS.field(True)
    retry_budget: float = RETRY_BUDGET.field(DEFAULT_BUDGET_S)

    def __post_init__(self) -> None:
        check(self)
        self.units = None if self.units is None else tuple(int(unit) for unit in self.units)


@dataclass(frozen=True)
class GroupTask:
    """One group's work: its units and their top images (rows in the order unit, rank)."""

    shard: int  # the group's number (executors know tasks by `shard`)
    units: tuple[int, ...]
    rows: dict  # unit, image_id, uri, y, x: one list per column


@dataclass
class GroupResult:
    """A finished group: what its marker records."""

    shard: int
    attempt: str
    files: list[str]  # relative to the index
    units: list[int]
    rows: int  # rows of its table
    images: int  # distinct images decoded
    failed_images: list[str]  # relpaths of top images that could not be decoded now (left out)
    forward_passes: int
    backward_passes: int
    writer: dict
    seconds: float
    retries: int = 0

    def marker(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "retries"}


@dataclass(frozen=True)
class ContributionsContext:
    """What every worker of a contributions run needs; it makes the worker (jobs.tasks.TaskContext)."""

    root: str  # the index (a directory or a URL)
    params: dict  # its run.json params: model, weights, preprocessing
    layer: str
    source: str
    top: int
    trust_code: bool
    retry: RetryPolicy

    def worker(self, threads: int | None = None, node: str | None = None, module=None) -> ContributionsWorker:
        return ContributionsWorker(self, threads, node)


class ContributionsWorker:
    """Runs groups: decodes their top images, computes the contributions, writes the group's table."""

    in_flight = 1  # a group's images are one forward pass: one group at a time

    def __init__(self, context: ContributionsContext, threads: int | None = None, node: str | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.lock = threading.Lock()  # the model's hooks serve one group at a time (Ray hands out two)
        self.context = context
        self.layout = IndexLayout(context.root, context.retry)
        self.module = index_model(context.params, context.trust_code, "contributions")
        self.prep = Preprocessing.from_dict(context.params["preprocessing"])
        self.decoder = Decoder(self.prep, context.params["max_pixels"], context.retry)
        self.writer = {"host": socket.gethostname(), "pid": os.getpid(), **({"node": node} if node else {})}

    def run_shard(self, task: GroupTask) -> Iterator[int | GroupResult | ShardFailure]:
        try:
            yield from self._run(task)
        except Exception as exc:
            if not (isinstance(exc, TransientError) or is_transient(exc)):
                raise
            yield ShardFailure(task.shard, describe(exc), 0, RETRIES.take())

    def _run(self, task: GroupTask) -> Iterator[int | GroupResult]:
        started = time.perf_counter()
        images, index, failed = self._decode(task.rows)
        keep = [i for i, image_id in enumerate(task.rows["image_id"]) if image_id in index]
        rows = {name: [values[i] for i in keep] for name, values in task.rows.items()}
        with self.lock:
            table, passes = self._table(images, index, rows)
        attempt = new_attempt()
        path = self.layout.contributions_file(self.context.layer, self.context.source, task.shard, attempt)
        self.layout.put(
            path, encode_parquet(table, {"layer": self.context.layer, "from": self.context.source})
        )
        yield len(task.units)
        yield GroupResult(
            shard=task.shard,
            attempt=attempt,
            files=[str(path.relative_to(self.layout.root))],
            units=list(task.units),
            rows=table.num_rows,
            images=len(index),
            failed_images=failed,
            forward_passes=passes[0],
            backward_passes=passes[1],
            writer=self.writer,
            seconds=time.perf_counter() - started,
            retries=RETRIES.take(),
        )

    def _decode(self, rows: dict):
        """(normalized images (N, 3, crop, crop), image_id -> position, relpaths that failed): each distinct
        top image once, decoded the index's way."""
        import torch

        index, pixels, failed = {}, [], []
        for image_id, uri in dict(zip(rows["image_id"], rows["uri"], strict=True)).items():
            decoded = self.decoder(path_from_display(uri))
            if decoded.pixels is None:
                failed.append(uri)
                continue
            index[image_id] = len(pixels)
            pixels.append(decoded.pixels)
        if not pixels:
            return torch.zeros(0, 3, self.prep.crop, self.prep.crop), index, failed
        x = torch.from_numpy(np.stack(pixels)).float().div_(255.0)
        mean = torch.tensor(self.prep.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.prep.std).view(1, 3, 1, 1)
        return (x - mean) / std, index, failed

    def _table(self, images, index: dict, rows: dict) -> tuple[pa.Table, tuple[int, int]]:
        """The group's contributions table, and (forward, backward) passes."""
        if not rows["unit"]:
            return pa.Table.from_pylist([], schema=schema.CONTRIBUTIONS), (0, 0)
        targets = Targets(
            image=[index[image_id] for image_id in rows["image_id"]],
            unit=rows["unit"],
            y=rows["y"],
            x=rows["x"],
        )
        found = contributions(
            self.module, self.context.layer, self.context.source, images, targets,
            top=self.context.top, batch_size=max(1, len(images)),
        )  # fmt: skip
        table = [
            {
                "layer": self.context.layer, "unit": row["unit"], "src_layer": self.context.source,
                "src_unit": row["channel"], "rank": row["rank"], "score": row["score"], "share": row["share"],
                "images": int(found.images[list(found.units).index(row["unit"])]),
            }
            for row in found.table()
        ]  # fmt: skip
        return pa.Table.from_pylist(table, schema=schema.CONTRIBUTIONS), (
            found.forward_passes,
            found.backward_passes,
        )

    def close(self) -> None:
        pass


@dataclass
class ContributionsSummary:
    layer: str
    source: str
    units: int  # units explained (in the table now)
    groups: int  # groups of this layer and source in the table
    computed: int  # groups this run computed
    reused: int  # groups committed by an earlier run
    forward_passes: int  # this run's
    backward_passes: int  # this run's
    failed_images: int  # top images that could not be decoded (left out of their unit's average)
    failed_shard_attempts: int
    seconds: float


def run_contributions(request: ContributionsRequest) -> ContributionsSummary:
    started = time.time()
    layout = IndexLayout(request.index, RetryPolicy(request.retry_budget))
    with index_lock(layout):
        manifest = layout.read_manifest()
        if manifest is None:
            raise InvalidInputError(f"{request.index} is not an actindex index (no run.json)")
        params = manifest["params"]
        source = request.source or source_below(params["layers"], request.layer)
        units = list(request.units or _all_units(layout, request.layer))
        rows = unit_tops(request.index, request.layer, units, request.k).rows
        _record(layout, params, request, source)
        done = _committed(layout, request, source, units)
        tasks = list(_tasks(units, rows, done))
        summary = ContributionsSummary(request.layer, source, 0, 0, 0, len(done), 0, 0, 0, 0, 0.0)
        if tasks:
            context = ContributionsContext(
                layout.url, params, request.layer, source, request.top, request.trust_code, layout.retry
            )
            _run(layout, request, context, tasks, summary)
        markers = _markers(layout, request.layer, source)
        summary.groups = len(markers)
        summary.units = sum(len(m["units"]) for m in markers.values())
        summary.seconds = time.time() - started
        return summary


def source_below(layers: list[str], layer: str) -> str:
    """The indexed layer just below `layer` (layers are recorded in module order)."""
    if layer not in layers:
        raise UnknownNameError(f"layer {layer!r} is not indexed; indexed layers: {', '.join(layers)}")
    at = layers.index(layer)
    if at == 0:
        raise InvalidInputError(
            f"{layer!r} is the lowest indexed layer: name the layer below it with --from (any module name)"
        )
    return layers[at - 1]


def _all_units(layout: IndexLayout, layer: str) -> range:
    rows = layout.read_table(layout.layers, columns=["layer", "channels"]).to_pylist()
    channels = {row["layer"]: row["channels"] for row in rows}
    if layer not in channels:
        raise UnknownNameError(f"layer {layer!r} is not indexed; indexed layers: {', '.join(channels)}")
    return range(channels[layer])


def _record(layout: IndexLayout, params: dict, request: ContributionsRequest, source: str) -> dict:
    """What this run computes with, recorded beside the markers; the groups of another record are cleared
    first (another k or top: only with --overwrite; the index or its weights changed: always)."""
    covers = topk_record(layout, layout.topk_covers)
    wanted = {
        "layer": request.layer,
        "source": source,
        "k": request.k,
        "top": request.top,
        "weights_sha256": params["weights_sha256"],
        "topk": sorted(covers or ()),
    }
    path = layout.contributions_record(request.layer, source)
    existing = layout.read_json(path)
    if existing == wanted:
        return wanted
    if existing is not None:
        asked = {key: wanted[key] for key in ("k", "top")}
        recorded = {key: existing.get(key) for key in ("k", "top")}
        if asked != recorded and not request.overwrite:
            raise ContributionsMismatchError(
                f"{layout.url} holds contributions of {request.layer} from {source} computed with "
                f"k={recorded['k']}, top={recorded['top']}; ask for those, or --overwrite to compute them "
                f"again with k={asked['k']}, top={asked['top']}"
            )
        if asked == recorded:
            log.warning("the index changed since its contributions were computed: computing them again")
        _clear(layout, request.layer, source)
    layout.put_json(path, wanted)
    return wanted


def _clear(layout: IndexLayout, layer: str, source: str) -> None:
    layout.delete([path for path in layout.files(layout.contributions_folder(layer, source, markers=True))])
    layout.delete_tree(layout.contributions_folder(layer, source))


def _markers(layout: IndexLayout, layer: str, source: str) -> dict[int, dict]:
    return {
        m["shard"]: m for m in layout.contributions_markers() if m["layer"] == layer and m["source"] == source
    }


def _committed(layout: IndexLayout, request: ContributionsRequest, source: str, units) -> dict[int, dict]:
    """{group: marker} of the groups already computed with the units this run asks for."""
    wanted: dict[int, set[int]] = {}
    for unit in units:
        wanted.setdefault(unit // GROUP_UNITS, set()).add(unit)
    return {
        group: marker
        for group, marker in _markers(layout, request.layer, source).items()
        if wanted.get(group, set()) <= set(marker["units"])
    }


def _tasks(units, rows: pa.Table, done: dict[int, dict]) -> Iterator[GroupTask]:
    """One task per group of `units` not done, with its units' top rows."""
    columns = rows.select(["unit", "image_id", "uri", "y", "x"]).to_pydict()
    by_group: dict[int, list[int]] = {}
    for unit in units:
        by_group.setdefault(unit // GROUP_UNITS, []).append(unit)
    for group, group_units in sorted(by_group.items()):
        if group in done:
            continue
        members = set(group_units)
        keep = [i for i, unit in enumerate(columns["unit"]) if unit in members]
        yield GroupTask(
            group, tuple(group_units), {name: [values[i] for i in keep] for name, values in columns.items()}
        )


def _run(layout, request: ContributionsRequest, context: ContributionsContext, tasks, summary) -> None:
    """Run the tasks; commit each group's marker (its file is written), last."""
    with open_executor(request) as executor:
        for event in executor.run(context, iter(tasks)):
            if isinstance(event, GroupResult):
                marker = {**event.marker(), "layer": request.layer, "source": context.source}
                layout.put_json(
                    layout.contributions_marker(request.layer, context.source, event.shard), marker
                )
                summary.computed += 1
                summary.forward_passes += event.forward_passes
                summary.backward_passes += event.backward_passes
                summary.failed_images += len(event.failed_images)
                if request.progress:
                    print(
                        f"actindex: group {summary.computed}/{len(tasks)} of {request.layer} from "
                        f"{context.source} (units {min(event.units)}-{max(event.units)})",
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
            elif isinstance(event, ShardFailure):
                summary.failed_shard_attempts += 1
                log.warning("group %d: an attempt failed (%s); it runs again", event.shard, event.error)
    _remove_orphans(layout, request.layer, context.source)


def _remove_orphans(layout: IndexLayout, layer: str, source: str) -> None:
    """Group files no marker lists (a killed run's, a lost attempt's, a group computed again)."""
    listed = {str(layout.root / f) for m in _markers(layout, layer, source).values() for f in m["files"]}
    folder = layout.contributions_folder(layer, source)
    layout.delete([path for path in layout.files(folder) if str(path) not in listed])
