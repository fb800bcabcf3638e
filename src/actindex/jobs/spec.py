"""What a run computes (RunSpec) and what the user asked for (IndexRequest).

    request = IndexRequest(source="photos/", out="idx/", layers=("layer*",), model="resnet18")
    spec = resolve_spec(request, plan, dataset_root, gpus=False)     # plan: jobs.worker.ModelPlan
    spec.params()        # exactly run.json's "params": every value resolved, nothing left "auto"

An IndexRequest holds layer patterns, "auto" choices and how to run (executor, address, workers, ...).
The driver resolves it once, before any shard starts, against the model it loaded and the workers it
has (GPUs or not): the RunSpec is frozen, travels to every worker, and is recorded. A rerun whose
resolved spec differs from the index's refuses and names what differs, so a run started on a GPU (bf16,
nvjpeg) and resumed on a CPU (fp32, Pillow) cannot mix shards.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from actindex.jobs.progress import EVERY, PROGRESS_EVERY
from actindex.pipeline.containers import Columns
from actindex.pipeline.decode import DEFAULT_MAX_PIXELS, DEVICE_DECODE_REFUSED
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.model_args import (
    MODEL,
    TRUST_CODE,
    WEIGHTS,
    check_model_args,
    weights_label,
    weights_to_load,
)
from actindex.pipeline.options import Option, check, flat_options, gather
from actindex.pipeline.patterns import LAYERS
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.retry import DEFAULT_BUDGET_S
from actindex.pipeline.sources import is_list_file
from actindex.pipeline.topk import K


class Executor(str, Enum):
    """Where the workers run."""

    ray = "ray"  # Ray actors: a local Ray unless --address / RAY_ADDRESS names a cluster
    local = "local"  # this process: no Ray at all


class Device(str, Enum):
    auto = "auto"  # cuda where the workers have GPUs
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"  # bf16 on GPUs, fp32 on CPUs
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class RfGates(str, Enum):
    """How receptive fields treat channel gates computed from a global pool (squeeze-excitation)."""

    constant = "constant"  # gates are constants: boxes follow the spatial path (rf_global_context marks them)
    strict = "strict"  # every position after a gate sees the whole image


RF_GATES = Option(  # `actindex index` and `actindex layers`
    "Receptive fields through squeeze-excitation gates: constant (default) treats the gates as constants, so "
    "boxes follow the spatial path (rf_global_context marks those layers); strict makes every position after "
    "a gate see the whole image.",
    choices=RfGates,
)


class Store(str, Enum):
    """What the index keeps."""

    dense = "dense"  # every image x unit in `activations`, plus `topk`
    topk = "topk"  # `images`, `layers` and `topk` only: for datasets whose dense table is too large


GPU_BATCH, CPU_BATCH = 256, 32  # 256 keeps an H100 busy on ResNet-50 (docs/performance.md); more buys little
# resolved per workers
EXECUTION_PARAMS = ("device", "precision", "device_decode", "batch_size", "compile", "model_threads")

# how a job runs: `actindex index` and `actindex contributions`
EXECUTOR = Option("ray (local Ray unless --address) or local (one process, no Ray).", choices=Executor)
ADDRESS = Option("Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
DEVICE = Option("Where the model runs: auto = cuda where the workers have GPUs.", choices=Device)
WORKERS = Option(
    "Model actors. Default: one per GPU, or one per node of a CPU cluster (a local Ray is one node). N: "
    "spread over the nodes (on GPUs at most one per GPU).",
    min=1,
)
PROGRESS = Option("Show a progress bar; with no terminal (batch logs), progress lines.")
MODEL_THREADS = Option(
    "Torch threads of the forward (default: every core of a worker on a CPU, 1 on a GPU); recorded, and kept "
    "when the run resumes.",
    min=1,
)
STAGE_THREADS = Option(  # --decode-threads, --finish-threads: jobs.stages.StageSplit
    "Threads of this stage in each worker (default: adapted while running, from where batches wait); never "
    "changes a result.",
    min=1,
)
RETRY_BUDGET = Option(
    "Seconds a request that fails transiently (HTTP 5xx/429, S3 SlowDown, timeouts, resets, EIO) is "
    "retried for, with backoff; a shard whose reads still fail runs again, up to 4 times.",
    min=0,
    unit="seconds",
)


@dataclass(frozen=True)
class RunSpec:
    """What a run computes. `params()` is exactly run.json's params; every worker gets this object."""

    model: str  # torchvision name, timm:NAME, efficientnet_lite0, a TorchScript file or python:module:factory
    # "DEFAULT", "builtin", "torchscript", "factory", "random" or the state-dict file loaded
    # (pipeline.model_args.weights_label)
    weights: str
    weights_sha256: str  # hash of the loaded state dict: every worker checks it built the same network
    layers: tuple[str, ...]  # resolved layer names, in module order
    preprocessing: Preprocessing  # resize, crop, interpolation, mean, std
    k: int  # images kept per unit in topk
    shard_size: int  # images per shard: the unit of work, of output files and of resume
    max_pixels: int  # larger images are error rows ("too large")
    # what image paths are relative to: the folder (prefix) a folder, glob or container source names; for
    # a list file --root, or its files' longest common folder on the index's first run (kept by reruns)
    dataset_root: str
    store: str  # "dense" or "topk" (Store)
    device: str  # "cpu" or "cuda": where the model runs
    precision: str  # "fp32", "bf16" or "fp16"
    device_decode: bool  # JPEGs decoded on the model's device (nvjpeg on GPUs)
    batch_size: int  # images per forward pass; batches never cross a shard
    compile: bool  # torch.compile the forward and reductions
    columns: dict | None = None  # Parquet columns chosen (pipeline.containers.Columns); None: defaults
    rf_gates: str = RfGates.constant.value  # "constant" or "strict": receptive fields through SE gates
    # torch threads of the forward (model_threads()); 0: not recorded (an index made before), torch's default
    model_threads: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))

    def params(self) -> dict:
        """The JSON form recorded in run.json and compared on every rerun."""
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        out["preprocessing"] = self.preprocessing.to_dict()
        out["preprocessing"]["mean"] = list(self.preprocessing.mean)
        out["preprocessing"]["std"] = list(self.preprocessing.std)
        if out["columns"] is None:  # indexes of folders and of default columns record nothing, as before
            del out["columns"]
        return out

    @classmethod
    def from_params(cls, params: dict) -> RunSpec:
        values = {  # fields with a default were added after the first indexes, which lack them
            f.name: params[f.name] if f.default is dataclasses.MISSING else params.get(f.name, f.default)
            for f in dataclasses.fields(cls)
        }
        values["preprocessing"] = Preprocessing.from_dict(params["preprocessing"])
        return cls(**values)

    @property
    def weights_arg(self) -> str | None:
        """What `pipeline.models.load_model` takes to load these weights again."""
        return weights_to_load(self.model, self.weights)


@dataclass
class IndexRequest:
    """An index job as the user asked for it: the arguments and options of `actindex index` (pipeline.options;
    the CLI builds it from them, actindex.index(...) too; so can a notebook)."""

    source: str = Option(
        "Image folder (recursive; subfolders = labels), glob, .txt/.csv list, WebDataset shards (a.tar, "
        "'shards/{00000..00099}.tar') or Parquet files ('data/*.parquet'); local or a URL (s3://bucket/prefix/).",
        positional=True,
    ).field()
    out: str = Option(  # created if missing
        "Index to write: a directory, or an S3 URL (s3://bucket/prefix/).", flags=("--out", "-o")
    ).field()
    layers: tuple[str, ...] = LAYERS.field()  # named_modules() names or globs ('layer*', 'features.**')
    model: str = MODEL.field("resnet50")
    weights: str | None = WEIGHTS.field(None)  # None: the model's own (pipeline.model_args)
    k: int = K.field(100)  # images kept per unit in the topk table
    batch_size: int | None = Option(  # batches never cross a shard
        "Images per forward pass (default: 256 on GPUs, 32 on CPUs).", min=1
    ).field(None)
    shard_size: int = Option("Images per shard (unit of output and resume).", min=1).field(1024)
    executor: Executor = EXECUTOR.field(Executor.ray)
    address: str | None = ADDRESS.field(None)
    device: Device = DEVICE.field(Device.auto)
    workers: int | None = WORKERS.field(None)
    # None: the model's own; on the command line --resize, --crop, ... each replace part of it (a dict)
    preprocessing: Preprocessing | dict | None = Option("", group=Preprocessing).field(None)
    root: str | None = Option(  # list files only (.txt/.csv/.lst); recorded as params["dataset_root"]
        "For a list file: the folder its images' ids (relpaths) are relative to; every listed file must be "
        "inside it. Default: the listed files' longest common folder on the index's first run, then the "
        "index's own."
    ).field(None)
    overwrite: bool = Option("Replace an index made with other parameters.").field(False)
    prune: bool = Option("Drop indexed images that are no longer in the dataset.").field(False)
    max_pixels: int = Option(  # larger images are error rows ("too large")
        "Images with more pixels are recorded as errors (decompression bombs).", min=1
    ).field(DEFAULT_MAX_PIXELS)
    trust_code: bool = TRUST_CODE.field(False)
    precision: Precision = Option(
        "auto = bf16 on GPUs, fp32 on CPUs; fp32 for exact results.", choices=Precision
    ).field(Precision.auto)
    compile: bool = Option("torch.compile the forward pass (GPU workers).").field(False)
    model_threads: int | None = MODEL_THREADS.field(None)  # None: model_threads(device, cores)
    decode_threads: int | None = STAGE_THREADS.field(None)  # None: adapted (jobs.stages.StageSplit)
    finish_threads: int | None = STAGE_THREADS.field(None)
    device_decode: bool | None = Option(  # None: on GPUs, if decode is "fast"
        "Decode JPEGs on the model's device (default: on GPUs).", flags=("--device-decode/--cpu-decode",)
    ).field(None)
    store: Store = Option(
        "dense: every image x unit in activations; topk: only the top-k table.", choices=Store
    ).field(Store.dense)
    rf_gates: RfGates = RF_GATES.field(RfGates.constant)
    progress: bool = PROGRESS.field(True)
    progress_every: float = PROGRESS_EVERY.field(
        EVERY, help="With no terminal: seconds between progress lines (shards, images/s, ETA)."
    )
    # Parquet sources: on the command line --image-column, --key-column, --label-column (a dict of those)
    columns: Columns | dict = Option(
        "",
        group=Columns,
        group_names="{}_column",
    ).field(default_factory=Columns)
    # unit names (pipeline.names): not a parameter of the index, a rerun with other files replaces them
    names: tuple[str, ...] = Option(
        "Unit names: FILE (UTF-8, one name per line; line i names unit i of the model's output layer, a "
        "blank line none) or LAYER=FILE for another layer; repeat for several. A rerun takes new files "
        "without recomputing anything.",
        flags=("--names",),
    ).field(())
    # pipeline.retry; recorded in run.json's config, not a parameter of the index (a rerun may change it)
    retry_budget: float = RETRY_BUDGET.field(DEFAULT_BUDGET_S)
    # otherwise such an image fails its shard attempt (and, once the attempts are used up, stops the job)
    record_failed_reads: bool = Option(
        "Record images whose reads still fail after the retry budget as error rows ('unreadable after "
        "retries') and finish, instead of stopping; --retry-errors retries them."
    ).field(False)
    retry_errors: bool = Option(
        "Index again every shard holding an error row (files fixed since, a codec installed since)."
    ).field(False)
    extra: dict = field(default_factory=dict)  # free-form notes stored in run.json (not an option)

    def __post_init__(self) -> None:
        self.names = (self.names,) if isinstance(self.names, str) else tuple(self.names)
        check(self)
        if isinstance(self.columns, dict):
            self.columns = Columns(**self.columns)
        if not self.layers:
            raise InvalidInputError("choose at least one layer (--layers); see: actindex layers MODEL")
        if self.executor is Executor.local and self.address:
            raise InvalidInputError(
                "--address joins a Ray cluster; it cannot be combined with --executor local"
            )
        if self.device_decode and _decode(self.preprocessing) == "torchvision":
            raise InvalidInputError(DEVICE_DECODE_REFUSED)
        check_model_args(self.model, self.weights, self.trust_code)
        if self.root is not None and not is_list_file(self.source):
            raise InvalidInputError(
                f"--root names the folder a list file's paths are relative to; {self.source!r} is not a list "
                "file (.txt, .csv, .lst): a folder, glob or container source is its own root"
            )


def _decode(preprocessing: Preprocessing | dict | None) -> str:
    """The decode mode a request asks for (Preprocessing.decode; "fast" unless it says otherwise)."""
    if isinstance(preprocessing, dict):
        return preprocessing.get("decode", "fast")
    return preprocessing.decode if preprocessing is not None else "fast"


def resolve_spec(
    request: IndexRequest,
    plan,
    dataset_root: str,
    gpus: bool,
    cores: int | None = None,
    recorded: dict | None = None,
) -> RunSpec:
    """Every "auto" of `request` decided for workers that have GPUs (`gpus`) or not, and `cores` each
    (default: this machine's); `plan` (a jobs.worker.ModelPlan) says what loading the model found: weights,
    layer names, preprocessing. `recorded`: the params of the index the run continues, whose torch threads
    it keeps."""
    device = ("cuda" if gpus else "cpu") if request.device is Device.auto else request.device.value
    if device == "cuda" and not gpus:
        raise InvalidInputError("--device cuda, but no worker has a GPU; use --device cpu or auto")
    if request.precision is Precision.auto:
        precision = "bf16" if device == "cuda" else "fp32"
    else:
        precision = request.precision.value
    return RunSpec(
        model=request.model,
        weights=plan.weights,
        weights_sha256=plan.weights_sha256,
        layers=tuple(plan.layers),
        preprocessing=plan.preprocessing,
        k=request.k,
        shard_size=request.shard_size,
        max_pixels=request.max_pixels,
        dataset_root=dataset_root,
        store=request.store.value,
        device=device,
        precision=precision,
        device_decode=_device_decode(request, plan.preprocessing, device),
        batch_size=request.batch_size or (GPU_BATCH if device == "cuda" else CPU_BATCH),
        compile=request.compile,
        columns=request.columns.to_dict(),
        rf_gates=request.rf_gates.value,
        model_threads=request.model_threads
        or (recorded or {}).get("model_threads")
        or model_threads(device, cores or available_cores()),
    )


def model_threads(device: str, cores: int) -> int:
    """The forward's torch threads, the rule: every core of a worker where the model runs on the CPU (there
    the forward is the costly stage; the decoding and finishing threads take what it leaves), one on a GPU
    (the host thread only launches kernels). Decided once and recorded (RunSpec.model_threads): how torch
    splits a sum between threads can change its float rounding, and resumed shards must add up alike."""
    return 1 if device == "cuda" else max(1, cores)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _device_decode(request: IndexRequest, preprocessing: Preprocessing, device: str) -> bool:
    """Whether JPEGs are decoded on the model's device: by default on GPUs, unless the preprocessing
    promises Pillow's exact pixels (decode "torchvision"), which only the CPU decoder gives (an explicit
    --device-decode with it was refused by IndexRequest)."""
    if request.device_decode is None:
        return device == "cuda" and preprocessing.decode == "fast"
    return request.device_decode


def pinned_params(request: IndexRequest, dataset_root: str) -> dict:
    """The run.json params that `request` fixes before any model is loaded or worker started: what a
    rerun can compare with the index at once. Layers given as globs, the weights' hash, the model's own
    preprocessing and every "auto" are only known later, and are left out."""
    pinned = {
        "model": request.model,
        "k": request.k,
        "shard_size": request.shard_size,
        "max_pixels": request.max_pixels,
        "dataset_root": dataset_root,
        "store": request.store.value,
        "compile": request.compile,
        "rf_gates": request.rf_gates.value,
    }
    pinned["weights"] = weights_label(request.model, request.weights)
    if request.columns.to_dict() is not None:
        pinned["columns"] = request.columns.to_dict()
    if not any(char in pattern for pattern in request.layers for char in "*?["):
        pinned["layers"] = list(request.layers)
    if isinstance(request.preprocessing, Preprocessing):
        pinned["preprocessing"] = request.preprocessing.to_dict()
    elif request.preprocessing:
        pinned["preprocessing"] = dict(request.preprocessing)
    for name in ("device", "precision"):
        if getattr(request, name).value != "auto":
            pinned[name] = getattr(request, name).value
    if request.device_decode is not None:
        pinned["device_decode"] = request.device_decode
    if request.batch_size is not None:
        pinned["batch_size"] = request.batch_size
    if request.model_threads is not None:
        pinned["model_threads"] = request.model_threads
    return pinned


def pinned_differences(recorded: dict, pinned: dict) -> list[str]:
    """`differences` limited to what `pinned` fixes (inside the preprocessing too)."""
    changed = []
    for key, value in pinned.items():
        old = recorded.get(key)
        if key == "preprocessing" and isinstance(old, dict):  # an older index may lack newer fields
            old = Preprocessing.from_dict(old).to_dict()
            old = {name: list(v) if isinstance(v, tuple) else v for name, v in old.items() if name in value}
            value = {name: list(v) if isinstance(v, tuple) else v for name, v in value.items()}
        elif key == "layers" and old is not None:
            old, value = sorted(old), sorted(value)  # order is the model's: checked once it is loaded
        if old != value:
            changed += differences({key: old}, {key: value})
    return changed


def differences(old: dict, new: dict, keys=None) -> list[str]:
    """'name: old -> new' for each of `keys` (default: all) whose values differ, for one-line refusals;
    dicts (the preprocessing) name the values inside them that differ ('preprocessing.decode: ...')."""
    names = keys if keys is not None else sorted(set(old) | set(new))
    changed = []
    for key in (key for key in names if old.get(key) != new.get(key)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{line}" for line in differences(a, b)]
        else:
            changed.append(f"{key}: {_short(a)} -> {_short(b)}")
    return changed


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def index_request(source: str, out: str, layers: str | Sequence[str], **options) -> IndexRequest:
    """An IndexRequest from the options of `actindex index`, named as the CLI names them (underscores for
    dashes; pipeline.options.flat_options): --resize/--crop/--interpolation/--mean/--std/--decode replace
    parts of the model's own preprocessing, --image-column/--key-column/--label-column pick Parquet columns,
    and every other option is the IndexRequest field of the same name. `layers` is a comma-separated string
    or a list."""
    fields = {f.name for f in dataclasses.fields(IndexRequest)}
    known = sorted((set(flat_options(IndexRequest)) | fields) - {"source", "out", "layers"})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InvalidInputError(f"unknown index option(s) {', '.join(unknown)}; options: {', '.join(known)}")
    values = {"source": str(source), "out": str(out), "layers": layers, **options}
    return IndexRequest(**gather(IndexRequest, values))


# the options of `actindex index` that replace part of the model's preprocessing, and those naming columns
PREPROCESSING_OPTIONS = tuple(
    n for n, (name, _, _) in flat_options(IndexRequest).items() if name == "preprocessing"
)
COLUMN_OPTIONS = {n: key for n, (name, key, _) in flat_options(IndexRequest).items() if name == "columns"}
