"""The index job: images -> per-unit maxima in Parquet, sharded, atomic, resumable, with top-k.

    from actindex.jobs.indexing import run_index
    from actindex.jobs.spec import IndexRequest
    summary = run_index(IndexRequest(source="photos/", out="idx/", model="resnet18", layers=("layer4",)))

As a cluster batch job (same options as `actindex index`):
    ray job submit --working-dir . -- python -m actindex index PHOTOS/ --layers 'layer*' --out idx/

The driver takes the index directory's lock and plans the run once (plan_run: the parameters compared with the
index's, the images listed, the shards it would compute compared with the index's markers). With nothing new
it loads the model only to check the index's parameters, and returns without starting Ray. Otherwise it starts
the executor, whose workers load the model and report what the job needs from it (layer names, weights hash,
receptive fields); the driver resolves the run spec against those workers, hands them whole shards, commits
each shard's marker once the worker has written its files, and folds the shard's top-k into the running lists.
It never runs the model on a shard and never touches an activation row. The topk table is written at the end,
from top-k lists only.

Every read and write is retried when it fails transiently (pipeline.retry, with --retry-budget); a shard
attempt that fails anyway runs again (jobs.tasks). When a shard has used its attempts, or a request of
the driver's own outlasts its budget, or the index's disk is full or read-only, the run stops with one line
(JobStoppedError, exit code 2): what failed, how many shards are kept, and "rerun the same command to
resume". Nothing is half-committed: a shard is visible only once its marker is written, last.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import shutil
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass

import pyarrow as pa

from actindex._version import __version__
from actindex.jobs.executor import open_executor
from actindex.jobs.finalize import set_topk_aside, write_topk
from actindex.jobs.incremental import (
    IndexState,
    Work,
    apply_prune,
    plan_work,
    read_state,
    remove_orphans,
    repair_markers,
    shards_to_retry,
)
from actindex.jobs.plan_lines import PREFIX, plan_lines
from actindex.jobs.progress import Shown
from actindex.jobs.progress import duration as _duration
from actindex.jobs.progress import rate as _rate
from actindex.jobs.spec import (
    EXECUTION_PARAMS,
    Device,
    IndexRequest,
    RfGates,
    RunSpec,
    differences,
    pinned_differences,
    pinned_params,
    resolve_spec,
)
from actindex.jobs.stages import StageTotals
from actindex.jobs.tasks import ShardAttemptsError, ShardExecutor
from actindex.jobs.worker import ModelPlan, ShardFailure, ShardResult, ShardTask, WorkContext, plan_model
from actindex.pipeline import schema
from actindex.pipeline.errors import UserError
from actindex.pipeline.geometry import LayerInfo, ReceptiveField, from_layers_row
from actindex.pipeline.layers import resolve_layers
from actindex.pipeline.layout import (
    INDEX_FORMAT,
    IndexLayout,
    commit_marker,
    marker_id,
    marker_totals,
    topk_is_current,
    write_parquet,
)
from actindex.pipeline.listing import Listing
from actindex.pipeline.lock import index_lock
from actindex.pipeline.model_args import (
    BUILTIN_EFFICIENTNET,
    RANDOM,
    TINY_CONV,
    brings_own_weights,
    random_weights,
)
from actindex.pipeline.models import ensure_pretrained, model_skeleton
from actindex.pipeline.names import NamesFile, read_names_options, unit_names
from actindex.pipeline.retry import RETRIES, RetryPolicy, TransientError
from actindex.pipeline.sources import check_source, dataset_root, display_path, is_list_file, list_root
from actindex.pipeline.topk import RunningTopK

log = logging.getLogger("actindex")


class IndexMismatchError(UserError, RuntimeError):
    """The output directory holds an index made with other parameters, or is not an index."""


class JobStoppedError(UserError, RuntimeError):
    """The run stopped on a failure that retries did not clear (a store that stays down, a full disk): the
    shards committed so far are kept, and rerunning the same command resumes."""


# errors writing the index's own files that stop the run at once (a transient EIO is retried first)
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM, errno.EFBIG}


@dataclass
class Summary:
    images: int  # images in the index (ok + error)
    indexed: int  # images with status ok
    failed: int  # images with status error
    activation_rows: int  # rows in the activations table
    topk_rows: int  # rows in the topk table
    new_images: int  # images this run added to the index
    reindexed: int  # images of pruned shards this run indexed again (they are still in the dataset)
    shards_done_before: int  # shards reused from earlier runs
    missing: int  # indexed images no longer in the dataset (kept unless pruned)
    pruned: int  # images this run dropped because they left the dataset
    listing_errors: int  # folders that could not be listed (their images are not in the index)
    seconds: float  # wall time of this run
    startup_seconds: float  # from the start until the first batch came back (model loading, Ray start-up)
    steady_images_per_second: float | None  # images after the first batch / time after the first batch
    driver_cpu_seconds: float  # CPU time of this process (the driver) during the run, children excluded
    driver_cpu_seconds_indexing: float  # the same, from the first shard handed out to the last committed
    bytes_on_disk: int  # size of the index directory
    out: str  # the index directory
    retried_requests: int = 0  # requests retried after a transient failure (botocore's and actindex's)
    failed_shard_attempts: int = 0  # shard attempts a transient failure ended (each shard ran again)
    recorded_after_retries: int = 0  # images recorded "unreadable after retries" (--record-failed-reads)
    retried_errors: int = 0  # error rows of earlier runs indexed again (transient kinds; --retry-errors: all)
    # the workers' stages: threads, busy seconds, rates, waits, the rate from the first batch out of the
    # model to the last shard written, the stage that held the run (jobs.stages.StageTotals); None: no shard
    stages: dict | None = None
    random_weights: bool = False  # the index's network has random weights (--weights random); not in run.json

    @property
    def images_per_second(self) -> float:
        """Images this run computed (new and re-indexed) per second of its wall time."""
        return ((self.new_images + self.reindexed) / self.seconds) if self.seconds > 0 else 0.0


def run_index(request: IndexRequest) -> Summary:
    clocks = (time.time(), own_cpu_seconds())
    RETRIES.take()  # count this run's retries only
    layout = IndexLayout(request.out, RetryPolicy(request.retry_budget))
    names = read_names_options(request.names)  # a missing or unreadable names file stops the run here
    tally = _Tally()
    with _stops_in_one_line(layout, tally), index_lock(layout) as lock, ExitStack() as stack:
        plan = plan_run(request, layout, stack, clocks)
        if plan.spec is None:  # nothing to compute
            params = plan.existing["params"]
            units = _units(layout, params["layers"], read_geometry(layout)[0], plan.model, names)
            write_parquet(units, layout.units, params, layout)
            return _finish_idle(layout, plan.existing, plan.state, plan.work, *clocks)
        spec = plan.spec
        infos, rfs = _geometry(layout, plan.executor, request, plan.model, plan.existing is not None)
        if request.progress:  # before any image is decoded: what the run will compute
            for line in plan_lines(spec, infos, rfs, plan.model.notes):
                print(line, file=sys.stderr, flush=True)
        units = _units(layout, spec.layers, infos, plan.model, names)  # a names file that does not fit: stop
        manifest = _manifest(request, len(plan.listing), plan.listing_errors, spec, clocks[0])
        layout.put_json(layout.manifest, manifest)
        write_parquet(layers_table(spec, infos, rfs), layout.layers, spec.params(), layout)
        write_parquet(units, layout.units, spec.params(), layout)
        context = WorkContext(
            spec, layout.url, infos, rfs, request.trust_code, spec.params(), layout.retry,
            request.record_failed_reads, request.decode_threads, request.finish_threads,
        )  # fmt: skip
        tally.start(len(plan.state.done), len(plan.work.pending), manifest)
        return _run(plan, context, manifest, lock, tally)


@dataclass
class RunPlan:
    """What a run decided before it computes anything, made once by plan_run."""

    request: IndexRequest
    layout: IndexLayout
    clocks: tuple[float, float]  # (wall, this process's CPU seconds) when the run started
    listing: Listing  # the dataset's images, sorted
    listing_errors: list[str]  # folders that could not be listed
    existing: dict | None  # the index's manifest when the run continues it; None: a new (or cleared) index
    state: IndexState  # its completed shards (and broken markers, deleted when the run starts)
    work: Work  # what the run computes
    model: ModelPlan  # what loading the model found: layer names, weights, preprocessing, classes
    executor: ShardExecutor | None = None  # started when the run computes
    spec: RunSpec | None = None  # resolved against the executor's workers; None: nothing to compute


def plan_run(
    request: IndexRequest, layout: IndexLayout, stack: ExitStack, clocks: tuple[float, float]
) -> RunPlan:
    """Everything the run will do, decided once, each check as early as it can be made: the source, the
    directory and the parameters the request fixes, then the model's and layers' names and its pretrained
    weights (check_model), all before the images are listed or Ray starts; the work before the model is
    loaded (a rerun with nothing to do starts no executor), the resolved parameters once the workers
    have loaded it. A rerun whose parameters differ is refused; with --overwrite the index is cleared,
    and the work planned again from nothing."""
    check_source(request.source)  # a path that does not exist: before anything is read or built
    existing = _existing_index(layout, request.overwrite)
    root = _dataset_root(request, existing, layout.retry)
    if existing is not None and not request.overwrite:
        compare_params(layout, existing, pinned_params(request, root), partial=True)
    check_model(request)  # names and weights: before the images are listed or Ray starts
    listing, listing_errors = _list(request, stack, layout.retry, root)
    # a new index has nothing done; the broken markers of an existing one are deleted when the run starts
    state = IndexState({}) if existing is None else read_state(layout, repair=False)
    work = _plan(listing, state, layout, request)
    executor, model = _start(request, layout, work, existing, stack)
    spec = None if executor is None else _resolve(request, model, root, executor, existing)
    if existing is None:
        layout.clear()  # an empty directory, or --overwrite of another format's index
    elif compare_params(layout, existing, *_params(request, model, root, spec), overwrite=request.overwrite):
        layout.clear()  # --overwrite of an index made with other parameters: planned again from nothing
        existing, state = None, IndexState({})
        work = _plan(listing, state, layout, request)
        spec = None if executor is None else _resolve(request, model, root, executor, None)
    plan = RunPlan(request, layout, clocks, listing, listing_errors, existing, state, work, model)
    if executor is None and not (work.idle and existing is not None):  # cleared: it computes after all
        executor = stack.enter_context(open_executor(request))
        spec = _resolve(request, model, root, executor, existing)
    plan.executor, plan.spec = executor, spec
    return plan


def _resolve(request: IndexRequest, model: ModelPlan, root: str, executor, existing: dict | None) -> RunSpec:
    """The run spec for the executor's workers; a run that continues an index keeps its torch threads."""
    recorded = existing["params"] if existing is not None else None
    return resolve_spec(request, model, root, executor.gpus(), executor.cores(), recorded)


def _dataset_root(request: IndexRequest, existing: dict | None, retry: RetryPolicy) -> str:
    """What the dataset's relpaths (image ids) are relative to. A folder, glob or container source: the folder
    it names. A list file: --root; else the root the index recorded on its first run (so ids never move as the
    list grows; --overwrite finds it again); else its files' longest common folder."""
    if not is_list_file(request.source):
        return dataset_root(request.source)
    if request.root is None and existing is not None and not request.overwrite:
        return existing["params"]["dataset_root"]
    return list_root(request.source, request.root, retry)


def check_model(request: IndexRequest, echo=None) -> None:
    """The model's and layers' names, and the DEFAULT weights, checked in the driver before anything starts:
    the model built on the meta device (pipeline.models.model_skeleton: no weights, about a second), its
    layer patterns resolved, and its pretrained weights found in the cache or downloaded into it (a line on
    stderr says so, with progress on). TorchScript and python: models are checked where they load."""
    skeleton = model_skeleton(request.model)
    if skeleton is None:
        return
    resolve_layers(skeleton, request.layers, request.model)
    if request.weights in (None, "DEFAULT") and request.model not in (BUILTIN_EFFICIENTNET, TINY_CONV):
        say = echo or (_say if request.progress else lambda line: None)
        ensure_pretrained(request.model, skeleton, echo=say)


def _say(line: str) -> None:
    print(PREFIX + line, file=sys.stderr, flush=True)


def _plan(refs: Listing, state: IndexState, layout: IndexLayout, request: IndexRequest) -> Work:
    """What this run computes: the new images, and the completed shards whose error rows it retries."""
    retry = shards_to_retry(layout, state, request.retry_errors)
    return plan_work(refs, state, layout, request.shard_size, request.prune, retry)


class _Tally:
    """What a stopped run can say: the shards kept, and the counters run.json records."""

    def __init__(self):
        self.kept: int | None = None  # shards completed (None until the run knows)
        self.total = 0  # shards the index will have
        self.manifest: dict | None = None
        self.counters = {"retried_requests": 0, "failed_shard_attempts": 0, "recorded_after_retries": 0}

    def start(self, done: int, pending: int, manifest: dict) -> None:
        self.kept, self.total, self.manifest = done, done + pending, manifest

    def add(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def shards(self) -> str:
        if self.kept is None:
            return "completed shards are kept"
        return f"{self.kept} of {self.total} shards are kept"


@contextmanager
def _stops_in_one_line(layout: IndexLayout, tally: _Tally):
    """Turn a failure that retries did not clear into JobStoppedError: a shard that used its attempts, a
    request that outlasted its budget, the index's disk full or read-only. run.json says "stopped" (when
    it can still be written)."""
    try:
        yield
    except ShardAttemptsError as exc:
        tally.add("failed_shard_attempts")  # the last one, which the executor raised instead of yielding
        what = f"shard {exc.shard} failed {exc.attempts} times; the last time: {exc.error}"
        raise _stopped(layout, tally, what) from None
    except TransientError as exc:
        raise _stopped(layout, tally, str(exc)) from None
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS or isinstance(exc, UserError):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        what = f"cannot write{where}: {exc.strerror or exc}"
        raise _stopped(layout, tally, what, "free space or fix the disk, then ") from None


def _stopped(layout: IndexLayout, tally: _Tally, what: str, fix: str = "") -> JobStoppedError:
    tally.add("retried_requests", RETRIES.take())
    if tally.manifest is not None:
        record = {**tally.manifest, **tally.counters, "status": "stopped", "stopped": what}
        try:
            layout.put_json(layout.manifest, record)
        except Exception as exc:  # noqa: BLE001 - the store may be the thing that is down: the message says it all
            log.warning("could not record the stop in run.json: %s", exc)
    return JobStoppedError(f"stopped: {what}; {tally.shards()}; {fix}rerun the same command to resume")


def _start(request: IndexRequest, layout: IndexLayout, work: Work, existing: dict | None, stack: ExitStack):
    """(executor or None, ModelPlan). When the run will compute, the executor starts now (on Ray, Ray and
    the actors come up in the background) and the workers load the model; a rerun with nothing to do loads
    it here, to check the index's parameters, and starts nothing."""
    if existing is None or not work.idle:
        executor = stack.enter_context(open_executor(request))
        reuse = existing is not None and layout.exists(layout.layers)  # geometry read back, not traced
        return executor, executor.plan(request, geometry=not reuse)
    return None, plan_model(request, geometry=False)[0]


def _geometry(layout: IndexLayout, executor, request: IndexRequest, plan, reuse: bool):
    """Each layer's output shape and receptive field: traced by the plan, or from the index's layers.parquet
    (the tracing takes seconds on large models), or traced now."""
    if plan.infos:
        return plan.infos, plan.rfs
    if reuse:
        return read_geometry(layout)
    plan = executor.plan(request, geometry=True)
    return plan.infos, plan.rfs


def _units(
    layout: IndexLayout, layers, infos: dict[str, LayerInfo], model: ModelPlan, names: list[NamesFile]
) -> pa.Table:
    """The index's units table after this run: the names files given, over the names the index holds,
    over the model's classes (pipeline.names.unit_names). A rerun with nothing to compute takes its names
    files too: they are not parameters."""
    stored = layout.read_table(layout.units) if layout.exists(layout.units) else None
    channels = {layer: infos[layer].channels for layer in layers}
    return unit_names(channels, model.output_layers, model.categories, names, stored)


def _list(
    request: IndexRequest, stack: ExitStack, retry: RetryPolicy, root: str
) -> tuple[Listing, list[str]]:
    """The dataset's images, sorted (spilled to a temporary folder while the job runs, when large); a list
    file's relpaths relative to `root`."""
    errors: list[tuple[str, str]] = []
    root_option = root if is_list_file(request.source) else None
    listing = Listing.build(
        request.source, errors=errors, columns=request.columns, retry=retry, root=root_option
    )
    refs = stack.enter_context(listing)
    for relpath, reason in errors:
        log.warning("not listed: %s (%s)", relpath, reason)
    return refs, [display_path(f"{relpath}: {reason}") for relpath, reason in errors]


def _params(request: IndexRequest, model: ModelPlan, root: str, spec: RunSpec | None) -> tuple[dict, tuple]:
    """(the params a rerun compares with the index's, those it leaves out): run.json's params resolved
    against the workers (`spec`); with no workers (nothing to compute) all but those that depend on their
    devices (EXECUTION_PARAMS)."""
    if spec is not None:
        return spec.params(), ()
    params = resolve_spec(request, model, root, request.device is not Device.cpu).params()
    return {k: v for k, v in params.items() if k not in EXECUTION_PARAMS}, EXECUTION_PARAMS


def _existing_index(layout: IndexLayout, overwrite: bool) -> dict | None:
    """The index the directory holds (its manifest, with the params older indexes implied), None when it
    holds none. Refused, before anything is loaded: a directory that holds something else, or an index of
    another format (unless --overwrite)."""
    existing = layout.read_manifest()
    if existing is not None and existing.get("format") == INDEX_FORMAT:
        return _with_defaults(existing)
    if overwrite:
        return None
    if existing is None and any(name != ".lock" for name in layout.entries()):
        raise IndexMismatchError(
            f"{layout.url} is not empty and holds no actindex run.json; choose another --out"
        )
    if existing is not None:
        raise IndexMismatchError(
            f"{layout.url} was written by an older actindex (index format {existing.get('format', 1)}, "
            f"this one writes {INDEX_FORMAT}); use another --out, or --overwrite to rebuild it"
        )
    return None


def compare_params(
    layout: IndexLayout,
    existing: dict,
    params: dict,
    skip: tuple = (),
    overwrite: bool = False,
    partial: bool = False,
) -> bool:
    """Compare a rerun's `params` with the index's: the one place it is done. `partial`: `params` are the
    few the request fixes before the model is loaded (jobs.spec.pinned_params); otherwise all of run.json's
    but `skip`. Refuses a difference in one line naming each, unless `overwrite`; returns whether the
    index must be cleared."""
    recorded = existing["params"]
    if "model_threads" not in recorded:  # an index made before they were recorded: it records this run's
        params = {key: value for key, value in params.items() if key != "model_threads"}
    if partial:
        changed = pinned_differences(recorded, params)
    else:
        changed = differences({k: v for k, v in recorded.items() if k not in skip}, params)
    if changed and not overwrite:
        hint = ""
        if recorded.get("weights") == RANDOM and any(line.startswith("weights:") for line in changed):
            hint = " (it was indexed with random weights: --weights random continues it)"
        raise IndexMismatchError(
            f"{layout.url} holds an index made with different parameters ({'; '.join(changed)}){hint}; "
            "use another --out, or --overwrite to replace it"
        )
    return bool(changed)


def _with_defaults(manifest: dict) -> dict:
    """The manifest with the params an index written before they existed implied: such an index decoded
    the "fast" way (its preprocessing has no "decode"), and resumes with the default --rf-gates (it keeps
    the boxes its layers table holds: geometry is read back, not traced again)."""
    params = manifest["params"]
    preprocessing = {"decode": "fast", **params["preprocessing"]}
    params = {"rf_gates": RfGates.constant.value, **params, "preprocessing": preprocessing}
    if params["weights"] == RANDOM and brings_own_weights(params["model"]):
        params["weights"] = "factory"  # what a python: model's own weights were recorded as before "factory"
    return {**manifest, "params": params}


def read_geometry(layout: IndexLayout) -> tuple[dict[str, LayerInfo], dict[str, ReceptiveField]]:
    infos, rfs = {}, {}
    for row in layout.read_table(layout.layers).to_pylist():
        infos[row["layer"]], rfs[row["layer"]] = from_layers_row(row)
    return infos, rfs


def _run(plan: RunPlan, context: WorkContext, manifest: dict, lock, tally: _Tally) -> Summary:
    layout, request, state, work = plan.layout, plan.request, plan.state, plan.work
    started, cpu_started = plan.clocks
    repair_markers(layout, state)
    apply_prune(layout, state, work)
    tally.kept = len(state.done)
    remove_orphans(layout, state)
    set_topk_aside(layout)  # stale from now on: readers see no topk until it is rebuilt at the end
    done_before = len(state.done) - work.retried_shards  # those indexed again in place are not reused
    tasks = (ShardTask(shard.index, shard.digest, shard.refs) for shard in work.pending)  # made as handed out
    fresh = {layer: RunningTopK(info.channels, context.spec.k) for layer, info in context.infos.items()}
    fresh_ids: set[str] = set()
    cpu_loop = own_cpu_seconds()
    stages = StageTotals()
    shards = len(work.pending)
    with _progress(request.progress, work.images, shards, request.progress_every, started) as progress:
        for event in plan.executor.run(context, tasks):
            if isinstance(event, ShardResult):
                lock.check()  # an index on an object store: stop if another job took the lease over
                commit_marker(layout, event.marker())
                fresh_ids.add(marker_id(event.marker()))
                for layer, top in event.topk.items():
                    fresh[layer].merge(top)
                tally.kept += event.shard not in state.done  # a shard indexed again in place was kept
                tally.add("retried_requests", event.retries)
                tally.add("recorded_after_retries", event.after_retries)
                stages.add(event.stages)
                progress.shard()
            elif isinstance(event, ShardFailure):
                tally.add("failed_shard_attempts")
                tally.add("retried_requests", event.retries)
                log.warning("shard %d: an attempt failed (%s); it runs again", event.shard, event.error)
            else:
                progress.images(event)
    loop_end, cpu_loop = time.time(), own_cpu_seconds() - cpu_loop
    first = progress.first  # (when, images): start-up ends with the first batch
    shutil.rmtree(layout.journal_dir, ignore_errors=True)  # every shard is done: no journal is needed
    state = read_state(layout, repair=False)
    remove_orphans(layout, state)  # files of attempts that lost (a worker died after writing them)
    lock.check()
    topk_rows = write_topk(layout, state.done, fresh, fresh_ids, context.infos, context.metadata)
    counts = {
        "listing_errors": len(manifest["listing_errors"]),
        "new_images": work.new_images,
        "reindexed": work.reindexed,
        "shards_done_before": done_before,
        "missing": 0 if request.prune else len(work.missing),
        "pruned": len(work.missing) if request.prune else 0,
        "startup_seconds": (first[0] - started) if first else 0.0,
        "steady_images_per_second": _rate(work.images - first[1], loop_end - first[0]) if first else None,
        "driver_cpu_seconds_indexing": cpu_loop,
        "retried_errors": work.retried_errors,
        "stages": stages.record(),
    }
    tally.add("retried_requests", RETRIES.take())  # the driver's own, and this process's workers' left over
    return _finish(
        layout, manifest, state.done, topk_rows, {**counts, **tally.counters}, started, cpu_started
    )


def _finish_idle(
    layout: IndexLayout, manifest: dict, state, work: Work, started: float, cpu: float
) -> Summary:
    """Nothing to compute: bring topk up to date if a killed run left it behind, and report."""
    topk_rows = None
    if not topk_is_current(layout, state.done):
        infos, _ = read_geometry(layout)
        fresh = {layer: RunningTopK(info.channels, manifest["params"]["k"]) for layer, info in infos.items()}
        topk_rows = write_topk(layout, state.done, fresh, set(), infos, manifest["params"])
    if topk_rows is None:
        topk_rows = layout.topk_rows()
    counts = {
        "listing_errors": len(manifest.get("listing_errors", [])),
        "new_images": 0,
        "reindexed": 0,
        "shards_done_before": len(state.done),
        "missing": len(work.missing),
        "pruned": 0,
        "startup_seconds": 0.0,
        "steady_images_per_second": None,
        "driver_cpu_seconds_indexing": 0.0,
        "retried_requests": RETRIES.take(),
    }
    manifest = {**manifest, "started": _iso(started), "finished": None, "status": "running"}
    return _finish(layout, manifest, state.done, topk_rows, counts, started, cpu)


def _manifest(request: IndexRequest, images: int, listing_errors: list[str], spec: RunSpec, started: float):
    config = {k: v for k, v in asdict(request).items() if k not in ("preprocessing", "progress")}
    return {
        "format": INDEX_FORMAT,
        "params": spec.params(),
        "source": request.source,
        "dataset_images": images,
        "listing_errors": listing_errors,
        "actindex_version": __version__,
        "config": {k: v.value if hasattr(v, "value") else v for k, v in config.items()},
        "started": _iso(started),
        "finished": None,
        "status": "running",
    }


def own_cpu_seconds() -> float:
    """utime + stime of this process, children excluded (Ray's processes and workers are not counted),
    from /proc/self/stat (os.times() elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        times = os.times()
        return times.user + times.system


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def layers_table(spec: RunSpec, infos: dict[str, LayerInfo], rfs: dict[str, ReceptiveField]) -> pa.Table:
    rows = []
    for layer in spec.layers:
        info, rf = infos[layer], rfs[layer]
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
                "rf_global_context": rf.global_context,
                **spec.preprocessing.to_dict(),
            }
        )
    return pa.Table.from_pylist(rows, schema=schema.LAYERS)


def _finish(layout, manifest: dict, markers: dict, topk_rows: int, counts: dict, started: float, cpu: float):
    images, ok, activation_rows = marker_totals(markers)
    summary = Summary(
        driver_cpu_seconds=own_cpu_seconds() - cpu,
        images=images,
        indexed=ok,
        failed=images - ok,
        activation_rows=activation_rows,
        topk_rows=topk_rows,
        seconds=time.time() - started,
        bytes_on_disk=layout.bytes_on_disk(),
        out=layout.url,
        random_weights=random_weights(manifest["params"]),
        **counts,
    )
    # run.json keeps the unlisted folders themselves under "listing_errors"; the summary counts them
    left_out = ("out", "bytes_on_disk", "listing_errors", "random_weights")  # params say the weights
    totals = {k: v for k, v in asdict(summary).items() if k not in left_out}
    layout.put_json(
        layout.manifest, {**manifest, **totals, "finished": _iso(time.time()), "status": "complete"}
    )
    return summary


STALL_SECONDS = 30.0  # a batch log says when nothing (not even a batch) has finished for this long


class _progress(Shown):
    """Progress of a run, on stderr. On a terminal a rich bar; otherwise (a batch job's log) one line
    every `every` seconds and one at the end: shards and images done, the rate after start-up, the time
    left, and how long nothing has finished when the job seems stuck. Disabled: nothing."""

    def __init__(self, enabled: bool, images: int, shards: int, every: float, started: float):
        self.enabled, self.total, self.shards_total, self.every = enabled, images, shards, every
        self.terminal = sys.stderr.isatty()
        self.images_done = self.shards_done = 0
        self.started, self.last_change = started, time.time()
        self.first: tuple[float, int] | None = None  # (when, images) of the first progress: start-up over
        self.lock = threading.Lock()

    def images(self, n: int) -> None:
        with self.lock:
            now = time.time()
            self.first = self.first or (now, self.images_done + n)
            self.images_done += n
            self.last_change = now
        if self.enabled and self.terminal:
            self.bar.update(self.task, completed=self.images_done, rate=self._rate_text())

    def shard(self) -> None:
        with self.lock:
            self.shards_done += 1
            self.last_change = time.time()

    def steady_rate(self) -> float | None:
        """Images/s since the first progress (start-up excluded); None while the window is too short."""
        if self.first is None:
            return None
        return _rate(self.images_done - self.first[1], time.time() - self.first[0])

    def _rate_text(self) -> str:
        rate = self.steady_rate()
        return "-" if rate is None else f"{rate:,.1f}"

    def line(self, final: bool = False) -> str:
        """The batch-log line for now."""
        with self.lock:
            now = time.time()
            head = (
                f"actindex: {self.shards_done}/{self.shards_total} shards, "
                f"{self.images_done:,}/{self.total:,} images"
            )
            if self.first is None and not final:
                return (
                    f"{head}; starting (loading the model, starting workers) for {now - self.started:.0f} s"
                )
            rate = self.steady_rate()
            text = f"{head}, {self._rate_text()} images/s after start-up"
            if final:
                return f"{text}; done in {now - self.started:.1f} s"
            left = self.total - self.images_done
            text += f", ETA {_duration(left / rate)}" if rate else ", ETA -"
            if now - self.last_change >= STALL_SECONDS:
                stalled = now - self.last_change
                text += f"; nothing finished for {stalled:.0f} s (see ray status, or the workers' logs)"
            return text

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=2,  # drawing costs the driver CPU: twice a second is enough to read
        )
        self.bar.start()
        self.task = self.bar.add_task("index", total=self.total, rate="-")
