"""The worker every executor runs: it turns whole shards into their files, next to the model.

    worker = ShardWorker(context)                  # loads the model once, checks its weights' hash
    for event in worker.run_shard(task):           # task: one shard's images; worker.in_flight at once
        ...   # ints (images done, every second), then the ShardResult

For each shard: decode in background threads (CPU Pillow, crash-journaled, or nvjpeg on the device with
the journaled CPU decoder as its fallback), run the model loop (pipeline.loop), then finish the shard
in this worker's finishing threads: order every unit (pipeline.finish), encode the activations files,
take the shard's top-k, and write images, activations and the top-k partial under names unique to
this attempt. The driver gets back what the marker needs and the top-k (units x k); it never sees an
activation row. Several shards may be in a worker at once (`in_flight`: 2 on a CPU, 4 on a GPU, whose
forward is faster than finishing): one in the model (a lock keeps the model to one of them), the next one
decoding ahead, the others being finished, so encoding overlaps the forward passes.

The decode journal makes an image that kills its process (a segfault in a C decoder) cost only that
image: each attempt at a batch appends `attempt`, then `start ID` / `end ID` around every CPU decode, to
`_journal/batch-<first id>.log`; an image that was being decoded when two attempts died becomes an error
row ("crashed the decoder") and the rest of the batch is decoded. Ray retries a shard whose actor died;
without Ray the user reruns the job.

Transient failures (pipeline.retry) are retried per request, with the run's budget. One that outlasts it
ends the shard attempt, not the image: `run_shard` yields a ShardFailure instead of a result, its files
are never committed, and the executor runs the shard again (jobs.tasks.MAX_SHARD_ATTEMPTS).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from actindex.jobs.spec import IndexRequest, RunSpec, available_cores
from actindex.jobs.stages import StageClock, StagePool, StageSplit
from actindex.pipeline import schema
from actindex.pipeline.decode import AFTER_RETRIES, DecodedImage, Decoder, error_kind
from actindex.pipeline.errors import UserError
from actindex.pipeline.finish import activations_table, order_units
from actindex.pipeline.geometry import LayerInfo, ReceptiveField, boxes
from actindex.pipeline.gpu import GpuDecoder, GpuRecorder
from actindex.pipeline.layers import container_notes, describe_layers, output_layers, resolve_layers
from actindex.pipeline.layout import IndexLayout, new_attempt, write_activations, write_parquet
from actindex.pipeline.loop import DecodedBatch, Prefetcher, record_batches
from actindex.pipeline.models import load_model
from actindex.pipeline.names import model_categories
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.receptive_field import compute_receptive_fields
from actindex.pipeline.recorder import ActivationRecorder
from actindex.pipeline.retry import RETRIES, RetryPolicy, TransientError, describe, is_transient
from actindex.pipeline.sources import ImageRef, display_path
from actindex.pipeline.storage import open_image_bytes, split_uri
from actindex.pipeline.topk import TopK, topk_table

log = logging.getLogger("actindex")
CRASH_REASON = "crashed the decoder: the process died while decoding this file"
IN_FLIGHT = {"cpu": 2, "cuda": 4}  # shards a worker holds at once, by device: see the module docstring
PROGRESS_EVERY = 1.0  # seconds between a worker's progress reports (each costs the driver a message)


@dataclass(frozen=True)
class ShardTask:
    """One shard's work: its images, in their sorted order."""

    shard: int  # names the shard's files and marker
    digest: str  # sha256 of its image ids (pipeline.shards.ids_digest)
    refs: tuple[ImageRef, ...]


@dataclass(frozen=True)
class ModelPlan:
    """What the job needs from the model, found by loading it once where the workers run."""

    weights: str  # what was loaded (pipeline.model_args.weights_label): "DEFAULT", "random", a file, ...
    weights_sha256: str  # hash of the loaded state dict
    layers: tuple[str, ...]  # the patterns resolved to layer names, in module order
    preprocessing: Preprocessing  # the request's, or the model's own
    infos: dict[str, LayerInfo]  # per layer: channels and feature-map size (empty: not traced)
    rfs: dict[str, ReceptiveField]  # per layer: receptive field (empty: not traced)
    # the layers whose output is the model's (B, C) output (pipeline.layers.output_layers); () when no
    # class names or --names FILE need them
    output_layers: tuple[str, ...] = ()
    categories: tuple[str, ...] | None = None  # the model's class names (pipeline.names.model_categories)
    notes: tuple[str, ...] = ()  # about the layers chosen: globs that matched containers (container_notes)


def plan_model(request: IndexRequest, geometry: bool = True):
    """(ModelPlan, the loaded module): load the request's model, resolve its layer patterns, find its class
    names and output layer (one forward pass, where names need it) and, with `geometry`, trace each layer's
    output shape and receptive field (seconds on large models)."""

    loaded = load_model(request.model, request.weights, trust_code=request.trust_code)
    layers = resolve_layers(loaded.module, request.layers, request.model)
    prep = request.preprocessing or loaded.preprocessing
    if isinstance(prep, dict):  # --resize/--crop/...: the model's own values, some replaced
        prep = dataclasses.replace(loaded.preprocessing, **prep)
    infos, rfs = {}, {}
    if geometry:
        size = (prep.crop, prep.crop)
        infos = describe_layers(loaded.module, layers, size)
        rfs = compute_receptive_fields(loaded.module, layers, size, gates=request.rf_gates.value)
    categories = model_categories(request.model, loaded.weights, loaded.module)
    outputs = output_layers(loaded.module, (prep.crop, prep.crop)) if categories or request.names else ()
    notes = tuple(container_notes(loaded.module, request.layers))
    plan = ModelPlan(
        loaded.weights, loaded.weights_sha256, tuple(layers), prep, infos, rfs, outputs, categories, notes
    )
    return plan, loaded.module


@dataclass(frozen=True)
class WorkContext:
    """What every worker of a run needs: the spec, where the index is, the layers' geometry."""

    spec: RunSpec
    root: str  # the index: a directory or an object-store URL (every worker writes its shards' files there)
    infos: dict[str, LayerInfo]  # per layer: channels, feature-map height and width
    rfs: dict[str, ReceptiveField]  # per layer: receptive field, for the top-k boxes
    trust_code: bool = False  # the model executes code when loaded (TorchScript, python:)
    metadata: dict = field(default_factory=dict)  # key-value metadata of every Parquet file
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # every read and write of the worker
    record_failed_reads: bool = False  # images whose reads outlast `retry`: "unreadable after retries" rows
    # threads of a worker's decoding and finishing stages, fixed; None: adapted (jobs.stages.StageSplit)
    decode_threads: int | None = None
    finish_threads: int | None = None

    def worker(self, threads: int | None = None, node: str | None = None, module=None) -> ShardWorker:
        """The worker an executor runs for this context (jobs.tasks.TaskContext)."""
        return ShardWorker(self, threads=threads, node=node, module=module)


@dataclass
class ShardResult:
    """What the driver gets back for a finished shard: the marker's contents and the top-k."""

    shard: int
    digest: str
    attempt: str  # the files' name suffix
    files: list[str]  # relative to the index directory
    images: int
    ok: int
    activation_rows: int
    writer: dict  # host, pid (and Ray node) of the process that wrote the files
    topk: dict[str, TopK]  # per layer: the shard's top-k (units x min(k, ok images))
    seconds: dict[str, float]  # model (decode + forward) and finish (order + encode + write) time
    after_retries: int = 0  # images recorded as "unreadable after retries" (--record-failed-reads)
    retries: int = 0  # requests the worker retried since its last report (pipeline.retry.RETRIES)
    # the worker's stages since its last result (jobs.stages.StageClock.take), its split of threads, when
    # this shard's first batch left the model and when its files were written (jobs.stages.StageTotals)
    stages: dict = field(default_factory=dict)

    def marker(self) -> dict:
        keys = (
            "shard",
            "digest",
            "attempt",
            "files",
            "images",
            "ok",
            "activation_rows",
            "writer",
            "seconds",
            "after_retries",
        )
        return {key: getattr(self, key) for key in keys}


@dataclass
class ShardFailure:
    """An attempt at a shard that a transient failure ended (its files are never committed): the executor
    runs the shard again, and the driver counts it."""

    shard: int
    error: str  # the request that failed and the store's error, one line
    images: int  # images this attempt reported done (taken back from the progress)
    retries: int = 0  # requests the worker retried since its last report


class Cancelled(Exception):
    """The worker was asked to stop between batches (the job is being interrupted)."""


class ShardWorker:
    def __init__(
        self,
        context: WorkContext,
        threads: int | None = None,
        decode_threads: int | None = None,
        finish_threads: int | None = None,
        node: str | None = None,
        module=None,
    ):
        """`threads`: the cores this worker may use (default: this process's); the forward runs on the spec's
        model_threads, decoding and finishing share the cores (jobs.stages.StageSplit), unless
        `decode_threads` / `finish_threads` (or the context's) fix them. `module`: the spec's model already
        loaded in this process (by plan_model, which the executor ran here; the caller checked its weights
        with check_weights); otherwise it is loaded here and checked."""
        self.context, self.spec = context, context.spec
        self._torch_threads()
        self.layout = IndexLayout(context.root, context.retry)
        self.recorder = make_recorder(module if module is not None else self._load(), self.spec)
        self.cpu_decoder = Decoder(
            self.spec.preprocessing, self.spec.max_pixels, context.retry, context.record_failed_reads
        )
        self.device_decoder = None
        if self.spec.device_decode:
            self.device_decoder = GpuDecoder(self.spec.preprocessing, self.spec.device, self.spec.max_pixels)
        self.journal = DecodeJournal(self.layout.journal_dir)
        cores = threads or available_cores()
        self.clock = StageClock()
        self.split = StageSplit(
            cores,
            decode_threads or context.decode_threads,
            finish_threads or context.finish_threads,
            decode_most=1 if self.spec.device_decode else None,  # nvjpeg decodes a batch in one call
        )
        self.decode_pool = StagePool("decode", self.split.decode, self.clock, most=cores)
        self.finish_pool = StagePool("finish", self.split.finish, self.clock, most=cores)
        self.in_flight = IN_FLIGHT[self.spec.device]
        self.model_lock = threading.Lock()
        self.model_free_since: float | None = None  # when the model last finished a shard
        self.decoding = threading.Semaphore(2)  # the shard in the model and the next one decode
        self.cancelled = threading.Event()
        self.writer = {"host": socket.gethostname(), "pid": os.getpid(), **({"node": node} if node else {})}
        self.finisher = ShardFinisher(context, self.finish_pool, self.writer)

    def _torch_threads(self) -> None:
        """The forward's torch threads, the spec's (set in the thread that runs the model: OpenMP keeps
        the count per thread)."""
        import torch

        if self.spec.model_threads and torch.get_num_threads() != self.spec.model_threads:
            torch.set_num_threads(self.spec.model_threads)

    def _load(self):
        loaded = load_model(self.spec.model, self.spec.weights_arg, trust_code=self.context.trust_code)
        check_weights(loaded.weights_sha256, self.spec)
        return loaded.module

    def close(self) -> None:
        self.cancelled.set()
        self.decode_pool.shutdown(wait=True, cancel_futures=True)
        self.finish_pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------------------- a shard

    def run_shard(self, task: ShardTask) -> Iterator[int | ShardResult | ShardFailure]:
        """Yields images done (every PROGRESS_EVERY seconds, and all of them before the result), then the
        ShardResult (its files are written); or, when a transient failure outlasted its retries, a
        ShardFailure. Any other exception is raised."""
        reported = 0
        try:
            for event in self._run_shard(task):
                if isinstance(event, int):
                    reported += event
                yield event
        except Exception as exc:
            if not (isinstance(exc, TransientError) or is_transient(exc)):
                raise
            yield ShardFailure(task.shard, describe(exc), reported, RETRIES.take())

    def _run_shard(self, task: ShardTask) -> Iterator[int | ShardResult]:
        started = time.perf_counter()
        size = self.spec.batch_size
        batches = [task.refs[i : i + size] for i in range(0, len(task.refs), size)]
        self.decoding.acquire()
        decoded = Prefetcher(self.decode, batches, self.decode_pool, depth=lambda: self.split.decode + 1)
        shard = _ShardResults(self.spec.layers)
        done, reported, last, first = 0, 0, time.monotonic(), None
        recorder = _TimedRecorder(self.recorder, self.clock)
        try:
            with self.model_lock:
                self._torch_threads()
                if self.model_free_since is not None:
                    self.clock.wait("model_for_shard", time.perf_counter() - self.model_free_since)
                for batch, results in record_batches(recorder, self._waited_for(decoded)):
                    if self.cancelled.is_set():
                        raise Cancelled
                    shard.add(batch, results)
                    done += len(batch.ok)
                    first = first or [time.time(), len(batch.ok)]
                    self.clock.add("model", images=len(batch.ok))
                    if self.split.update(self.clock):
                        self.decode_pool.resize(self.split.decode)
                        self.finish_pool.resize(self.split.finish)
                    if time.monotonic() - last >= PROGRESS_EVERY:  # each report costs the driver a message
                        yield done - reported
                        reported, last = done, time.monotonic()
                self.model_free_since = time.perf_counter()
        finally:
            decoded.close()
            self.decoding.release()
        if done > reported:
            yield done - reported
        computed = time.perf_counter()
        result = self.finisher(task, shard.meta(), {layer: shard.layer(layer) for layer in self.spec.layers})
        self.clock.add("finish", images=len(task.refs))
        result.seconds = {"model": computed - started, "finish": time.perf_counter() - computed}
        result.retries = RETRIES.take()
        result.stages = {
            **self.clock.take(),
            "worker": f"{self.writer['host']}:{self.writer['pid']}",
            "threads": self.split.threads(),
            "model_threads": self.spec.model_threads,
            "first_batch": first,
            "written": time.time(),
            "shard_images": len(task.refs),
        }
        yield result

    def _waited_for(self, batches: Prefetcher) -> Iterator[DecodedBatch]:
        """The decoded batches, timing how long the model waited for each (decoding is behind)."""
        batches = iter(batches)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            self.clock.wait("model_for_decode", time.perf_counter() - asked)
            yield batch

    # -------------------------------------------------------------------------------------------- decode

    def decode(self, refs: tuple[ImageRef, ...]):
        """One batch of images -> DecodedBatch; every CPU decode is journaled."""
        import torch

        self.clock.add("decode", images=len(refs))
        with self.journal.batch(refs[0].image_id) as journal:
            if self.device_decoder is not None:
                uris = [ref.uri for ref in refs]
                data = [_read_bytes(uri) for uri in uris]

                def fallback(i: int) -> DecodedImage:
                    return journal.decode(refs[i].image_id, lambda: self.cpu_decoder(uris[i]))

                return self.device_decoder(data, uris, wait=False, fallback=fallback)
            decoded = [
                journal.decode(ref.image_id, lambda ref=ref: self.cpu_decoder(ref.uri)) for ref in refs
            ]
        crop = self.spec.preprocessing.crop
        blank = np.zeros((3, crop, crop), dtype=np.uint8)
        pixels = np.stack([d.pixels if d.pixels is not None else blank for d in decoded])
        return DecodedBatch(
            pixels=torch.from_numpy(pixels),
            ok=np.array([d.error is None for d in decoded]),
            width=np.array([d.width for d in decoded], dtype=np.int32),
            height=np.array([d.height for d in decoded], dtype=np.int32),
            error=np.array([d.error or "" for d in decoded], dtype=object),
            on_device=np.zeros(len(decoded), dtype=bool),
        )


class _TimedRecorder:
    """The worker's recorder, its forwards (and waits for a device's results) timed as the model's busy
    seconds."""

    def __init__(self, recorder, clock: StageClock):
        self.recorder, self.clock = recorder, clock

    def __getattr__(self, name: str):
        return getattr(self.recorder, name)

    def submit(self, pixels):
        with self.clock.busy("model"):
            return _TimedResult(self.recorder.submit(pixels), self.clock)


class _TimedResult:
    def __init__(self, pending, clock: StageClock):
        self.pending, self.clock = pending, clock

    def result(self):
        with self.clock.busy("model"):
            return self.pending.result()


class ShardFinisher:
    """What a worker does with a shard after the model: order every unit, encode the activations files,
    take the shard's top-k, write images, activations and the top-k partial; layers in `pool`'s threads.

        result = ShardFinisher(context, pool)(task, meta, {"layer4": (act, pos)})
    """

    def __init__(self, context: WorkContext, pool: Executor | None = None, writer: dict | None = None):
        self.context, self.spec = context, context.spec
        self.layout = IndexLayout(context.root, context.retry)
        self.pool = pool
        self.writer = writer or {"host": socket.gethostname(), "pid": os.getpid()}

    def __call__(self, task: ShardTask, meta: dict[str, np.ndarray], layers: dict) -> ShardResult:
        """meta: ok, width, height, error per image of the task; layers: (act, pos) (n_ok, U) each."""
        attempt = new_attempt()
        ok = meta["ok"].astype(bool)
        ok_ids = np.array([ref.image_id for ref in task.refs], dtype=np.int64)[ok]
        sizes = np.stack([meta["width"][ok], meta["height"][ok]], axis=1)
        submit = self.pool.submit if self.pool is not None else _now
        jobs = {
            layer: submit(self._layer, task.shard, attempt, layer, act, pos, ok_ids, sizes)
            for layer, (act, pos) in layers.items()
        }
        files = [self.layout.images_file(task.shard, attempt)]
        images = submit(self._write, images_table, (task.refs, meta), files[0])
        tops, rows = {}, 0
        for layer, job in jobs.items():
            tops[layer], path, count = job.result()
            rows += count
            if path is not None:
                files.append(path)
        images.result()
        files.append(self.layout.partial_file(task.shard, attempt))
        submit(self._write, partial_table, (tops, self.context.infos), files[-1]).result()
        return ShardResult(
            shard=task.shard,
            digest=task.digest,
            attempt=attempt,
            files=[str(path.relative_to(self.layout.root)) for path in files],
            images=len(task.refs),
            ok=int(ok.sum()),
            activation_rows=rows,
            writer=self.writer,
            topk=tops,
            seconds={},
            after_retries=int(sum(error_kind(str(e)) == AFTER_RETRIES for e in meta["error"][~ok])),
        )

    def _write(self, table, args: tuple, path) -> None:
        """Build a table and write it (in the pool: every part of finishing runs in finishing threads)."""
        write_parquet(table(*args), path, self.context.metadata, self.layout)

    def _layer(self, shard, attempt, layer, act, pos, ok_ids, sizes) -> tuple[TopK, object, int]:
        ordered = order_units(act, pos, ok_ids)
        width, rf = self.context.infos[layer].width, self.context.rfs[layer]
        sizes_by_id = sizes[np.argsort(ok_ids, kind="stable")]

        def boxes_for(index: np.ndarray, positions: np.ndarray) -> np.ndarray:
            model_boxes = boxes(rf, positions.ravel() // width, positions.ravel() % width)
            original = self.spec.preprocessing.to_original(
                model_boxes, sizes_by_id[index.ravel(), 0], sizes_by_id[index.ravel(), 1]
            )
            return original.reshape(*index.shape, 4)

        top = ordered.top(self.spec.k, boxes_for)
        if self.spec.store != "dense":
            return top, None, 0
        path = self.layout.activations_file(layer, shard, attempt)
        write_activations(activations_table(ordered, width), path, self.context.metadata, self.layout)
        return top, path, ordered.rows


class _now:
    """A finished future: the finisher without a pool runs each layer right away."""

    def __init__(self, fn, *args):
        self.value = fn(*args)

    def result(self):
        return self.value


def check_weights(sha256: str, spec: RunSpec) -> None:
    """Every worker must compute with the weights the run spec records."""
    if sha256 != spec.weights_sha256:
        raise UserError(
            f"the model loaded on {socket.gethostname()} has other weights than the run's (sha256 "
            f"{sha256[:12]} != {spec.weights_sha256[:12]}): install the same torch, torchvision, timm and "
            "weights file on every node"
        )


def make_recorder(module, spec: RunSpec):
    """ActivationRecorder for exact fp32 on the CPU; the GPU path's GpuRecorder (autocast, channels_last,
    asynchronous copies, optional compile) on CUDA or at lower precision."""

    if spec.device == "cpu" and spec.precision == "fp32" and not spec.compile:
        return ActivationRecorder(module, spec.layers, spec.preprocessing, spec.device)

    return GpuRecorder(
        module, spec.layers, spec.preprocessing, spec.device, precision=spec.precision, compile=spec.compile
    )


class _ShardResults:
    """One shard's per-batch results, in order: metadata of every image, act/pos of the ok ones."""

    def __init__(self, layers: tuple[str, ...]):
        self.layers = layers
        self.batches: list = []
        self.results: list[dict] = []

    def add(self, batch, results: dict) -> None:
        self.batches.append(batch)
        self.results.append(results)

    def meta(self) -> dict[str, np.ndarray]:
        return {
            key: np.concatenate([getattr(b, key) for b in self.batches])
            for key in ("ok", "width", "height", "error")
        }

    def layer(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([r[name][0] for r in self.results]), np.concatenate(
            [r[name][1] for r in self.results]
        )


def images_table(refs: tuple[ImageRef, ...], meta: dict[str, np.ndarray]) -> pa.Table:
    ok = meta["ok"].astype(bool)
    # display_path: a file name that is not UTF-8 is stored %-escaped (Parquet strings must be UTF-8)
    return pa.table(
        {
            "image_id": np.array([ref.image_id for ref in refs], dtype=np.int64),
            "uri": [display_path(ref.uri) for ref in refs],
            "relpath": [display_path(ref.relpath) for ref in refs],
            "width": meta["width"].astype(np.int32),
            "height": meta["height"].astype(np.int32),
            "label": [None if ref.label is None else display_path(ref.label) for ref in refs],
            "status": np.where(ok, "ok", "error"),
            "error": [None if good else str(err) for good, err in zip(ok, meta["error"], strict=True)],
        },
        schema=schema.IMAGES,
    )


def partial_table(tops: dict[str, TopK], infos: dict[str, LayerInfo]) -> pa.Table:
    """A shard's top-k as rows of the topk schema (rank within the shard)."""
    return pa.concat_tables([topk_table(layer, top, infos[layer].width) for layer, top in tops.items()])


class DecodeJournal:
    """Where each attempt at a batch records the images it decodes (see the module docstring)."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    @contextmanager
    def batch(self, key: int):
        if self.folder is None:
            yield _BatchJournal(None, set())
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"batch-{key}.log"
        crashed = _crashed_ids(path)
        with open(path, "a") as entries:
            entries.write("attempt\n")
            yield _BatchJournal(entries, crashed)
        path.unlink(missing_ok=True)


class _BatchJournal:
    def __init__(self, entries, crashed: set[int]):
        self.entries, self.crashed = entries, crashed

    def decode(self, image_id: int, decode) -> DecodedImage:
        if image_id in self.crashed:
            return DecodedImage(None, 0, 0, CRASH_REASON)
        if self.entries is None:
            return decode()
        self.entries.write(f"start {image_id}\n")
        self.entries.flush()  # in the OS page cache: it outlives the process
        try:
            return decode()
        finally:  # an exception (a read that outlasted its retries) is no crash: only a dead process is
            self.entries.write(f"end {image_id}\n")


def _crashed_ids(journal: Path, strikes: int = 2) -> set[int]:
    """Images that were being decoded when `strikes` earlier attempts at this batch died."""
    if not journal.is_file():
        return set()
    deaths: dict[int, int] = {}
    for attempt in journal.read_text().split("attempt\n")[1:]:
        started, ended = set(), set()
        for line in attempt.splitlines():
            kind, _, image_id = line.partition(" ")
            if image_id.isdigit():
                (started if kind == "start" else ended).add(int(image_id))
        for image_id in started - ended:
            deaths[image_id] = deaths.get(image_id, 0) + 1
    crashed = {image_id for image_id, count in deaths.items() if count >= strikes}
    for image_id in crashed:
        log.warning("image %d killed a decode worker; recording it as an error", image_id)
    return crashed


def _read_bytes(uri: str) -> bytes:
    """The file's bytes, or b"" when it cannot be read or is not a regular file (a FIFO would block): the
    device decoder then hands it to the CPU decoder, which names the reason."""
    if split_uri(uri)[0] != "file":  # an object, tar member or Parquet value: the CPU decoder names failures
        try:
            return open_image_bytes(uri)
        except Exception:  # noqa: BLE001 - b"" sends it to the CPU decoder, which records the reason
            return b""
    try:
        if not stat.S_ISREG(os.stat(uri).st_mode):
            return b""
        with open(uri, "rb") as f:
            return f.read()
    except OSError:
        return b""
