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
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from actindex.pipeline.containers import Columns
from actindex.pipeline.decode import DEFAULT_MAX_PIXELS, DEVICE_DECODE_REFUSED
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.model_args import check_model_args
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.retry import DEFAULT_BUDGET_S


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


class Store(str, Enum):
    """What the index keeps."""

    dense = "dense"  # every image x unit in `activations`, plus `topk`
    topk = "topk"  # `images`, `layers` and `topk` only: for datasets whose dense table is too large


GPU_BATCH, CPU_BATCH = 256, 32  # 256 keeps an H100 busy with ResNet-50 (see README); more buys little
EXECUTION_PARAMS = ("device", "precision", "device_decode", "batch_size", "compile")  # resolved per workers


@dataclass(frozen=True)
class RunSpec:
    """What a run computes. `params()` is exactly run.json's params; every worker gets this object."""

    model: str  # torchvision name, timm:NAME, efficientnet_lite0, a TorchScript file or python:module:factory
    weights: str  # "random", "DEFAULT", "builtin", "torchscript" or the state-dict file loaded
    weights_sha256: str  # hash of the loaded state dict: every worker checks it built the same network
    layers: tuple[str, ...]  # resolved layer names, in module order
    preprocessing: Preprocessing  # resize, crop, interpolation, mean, std
    k: int  # images kept per unit in topk
    shard_size: int  # images per shard: the unit of work, of output files and of resume
    max_pixels: int  # larger images are error rows ("too large")
    dataset_root: str  # what image paths are relative to
    store: str  # "dense" or "topk" (Store)
    device: str  # "cpu" or "cuda": where the model runs
    precision: str  # "fp32", "bf16" or "fp16"
    device_decode: bool  # JPEGs decoded on the model's device (nvjpeg on GPUs)
    batch_size: int  # images per forward pass; batches never cross a shard
    compile: bool  # torch.compile the forward and reductions
    columns: dict | None = None  # Parquet columns chosen (pipeline.containers.Columns); None: defaults
    rf_gates: str = "constant"  # "constant" or "strict" (RfGates): receptive fields through SE gates

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
        optional = {"columns": None, "rf_gates": RfGates.constant.value}  # added after the first indexes
        values = {f.name: params[f.name] for f in dataclasses.fields(cls) if f.name not in optional}
        values.update({name: params.get(name, default) for name, default in optional.items()})
        values["preprocessing"] = Preprocessing.from_dict(params["preprocessing"])
        return cls(**values)

    @property
    def weights_arg(self) -> str | None:
        """What `pipeline.models.load_model` takes to load these weights again."""
        return None if self.weights in ("random", "builtin", "torchscript") else self.weights


@dataclass
class IndexRequest:
    """An index job as the user asked for it (the CLI builds it; so can a notebook)."""

    source: str  # image folder (recursive), glob, .txt/.csv list, .tar shards or .parquet files; or a URL
    out: str  # index directory (created if missing)
    layers: tuple[str, ...]  # named_modules() names or globs ('layer*', 'features.**')
    model: str = "resnet50"  # torchvision name, timm:NAME, efficientnet_lite0, or a TorchScript file
    weights: str | None = None  # None = the model's default (random, or built-in); "DEFAULT"; a .pth file
    k: int = 100  # images kept per unit in the topk table
    shard_size: int = 1024  # images per shard (unit of output files and of resume)
    preprocessing: Preprocessing | dict | None = None  # None: the model's own; a dict: some of it replaced
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are recorded as errors ("too large")
    store: Store = Store.dense  # dense, or topk (no activations table)
    rf_gates: RfGates = RfGates.constant  # squeeze-excitation gates: constants for boxes, or strict (global)
    device: Device = Device.auto  # auto = cuda where the workers have GPUs
    precision: Precision = Precision.auto  # auto = bf16 on GPUs, fp32 on CPUs
    device_decode: bool | None = None  # JPEGs decoded on the model's device; None = on GPUs, if decode "fast"
    batch_size: int | None = None  # images per forward pass; None = 256 on GPUs, 32 on CPUs
    compile: bool = False  # torch.compile the forward + reductions
    executor: Executor = Executor.ray  # ray (local Ray started if no address) or local (no Ray)
    address: str | None = None  # Ray cluster address; None = RAY_ADDRESS or a new local Ray
    workers: int | None = None  # model actors; None = one per GPU, or one per node
    overwrite: bool = False  # clear an index made with other parameters instead of refusing
    prune: bool = False  # drop indexed images that are no longer in the dataset
    trust_code: bool = False  # allow models that execute code when loaded (TorchScript, python:)
    progress: bool = True  # show a progress bar (on a terminal) or progress lines (in a log)
    progress_every: float = 30.0  # seconds between progress lines when stderr is not a terminal
    extra: dict = field(default_factory=dict)  # free-form notes stored in run.json
    columns: Columns = field(default_factory=Columns)  # Parquet sources: image, key and label columns
    # unit names (pipeline.names): "FILE" names the output layer's units, "LAYER=FILE" those of LAYER; one
    # name per line. Not a parameter of the index: a rerun with other files replaces those layers' names
    names: tuple[str, ...] = ()
    # seconds a request that fails transiently (pipeline.retry: 5xx, 429, timeouts, resets, EIO) is retried
    # for; recorded in run.json's config, not a parameter of the index (a rerun may change it)
    retry_budget: float = DEFAULT_BUDGET_S
    # an image whose reads still fail after the budget is an error row "unreadable after retries" instead
    # of failing its shard attempt (and, once the attempts are used up, stopping the job)
    record_failed_reads: bool = False
    retry_errors: bool = False  # index again every shard that holds an error row (files fixed, codecs added)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        self.names = (self.names,) if isinstance(self.names, str) else tuple(self.names)
        for name, kind in (
            ("store", Store),
            ("rf_gates", RfGates),
            ("device", Device),
            ("precision", Precision),
            ("executor", Executor),
        ):
            setattr(self, name, _choice(kind, getattr(self, name), name))
        if not self.layers:
            raise InvalidInputError("choose at least one layer (--layers); see: actindex layers MODEL")
        if self.k < 1:
            raise InvalidInputError(f"k must be at least 1 (got {self.k})")
        if (self.batch_size is not None and self.batch_size < 1) or self.shard_size < 1:
            raise InvalidInputError(
                f"batch_size ({self.batch_size}) and shard_size ({self.shard_size}) must be positive"
            )
        if self.executor is Executor.local and self.address:
            raise InvalidInputError(
                "--address joins a Ray cluster; it cannot be combined with --executor local"
            )
        if isinstance(self.preprocessing, dict):
            unknown = set(self.preprocessing) - {f.name for f in dataclasses.fields(Preprocessing)}
            if unknown:
                raise InvalidInputError(f"unknown preprocessing values {sorted(unknown)}")
        if self.device_decode and _decode(self.preprocessing) == "torchvision":
            raise InvalidInputError(DEVICE_DECODE_REFUSED)
        if self.max_pixels < 1:
            raise InvalidInputError(f"max_pixels must be positive (got {self.max_pixels})")
        if self.workers is not None and self.workers < 1:
            raise InvalidInputError(f"workers must be at least 1 (got {self.workers})")
        if not self.retry_budget >= 0:
            raise InvalidInputError(f"retry_budget must be 0 or more seconds (got {self.retry_budget})")
        check_model_args(self.model, self.weights, self.trust_code)


def _choice(kind: type[Enum], value, name: str) -> Enum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(item.value for item in kind)
        raise InvalidInputError(f"{name} {value!r} is not one of {choices}") from None


def _decode(preprocessing: Preprocessing | dict | None) -> str:
    """The decode mode a request asks for (Preprocessing.decode; "fast" unless it says otherwise)."""
    if isinstance(preprocessing, dict):
        return preprocessing.get("decode", "fast")
    return preprocessing.decode if preprocessing is not None else "fast"


def resolve_spec(request: IndexRequest, plan, dataset_root: str, gpus: bool) -> RunSpec:
    """Every "auto" of `request` decided for workers that have GPUs (`gpus`) or not; `plan` (a
    jobs.worker.ModelPlan) says what loading the model found: weights, layer names, preprocessing."""
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
    )


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
    if request.weights is not None:
        pinned["weights"] = request.weights
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


PREPROCESSING_OPTIONS = ("resize", "crop", "interpolation", "mean", "std", "decode")
COLUMN_OPTIONS = {"image_column": "image", "key_column": "key", "label_column": "label"}


def index_request(source: str, out: str, layers: str | Sequence[str], **options) -> IndexRequest:
    """An IndexRequest from the options of `actindex index`, named as the CLI names them (underscores for
    dashes): --resize/--crop/--interpolation/--mean/--std/--decode replace parts of the model's own
    preprocessing, --image-column/--key-column/--label-column pick Parquet columns, and every other option
    is the IndexRequest field of the same name. `layers` is a comma-separated string or a list."""
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",")]
    fields = {f.name for f in dataclasses.fields(IndexRequest)} - {"source", "out", "layers"}
    unknown = sorted(set(options) - fields - set(PREPROCESSING_OPTIONS) - set(COLUMN_OPTIONS))
    if unknown:
        known = ", ".join(sorted(fields | set(PREPROCESSING_OPTIONS) | set(COLUMN_OPTIONS)))
        raise InvalidInputError(f"unknown index option(s) {', '.join(unknown)}; options: {known}")
    overrides = {name: options.pop(name) for name in PREPROCESSING_OPTIONS if options.get(name) is not None}
    options = {name: value for name, value in options.items() if name not in PREPROCESSING_OPTIONS}
    if overrides and options.get("preprocessing") is not None:
        raise InvalidInputError(f"give preprocessing or {', '.join(overrides)}, not both")
    columns = {key: options.pop(name, None) for name, key in COLUMN_OPTIONS.items()}
    return IndexRequest(
        source=str(source),
        out=str(out),
        layers=tuple(name for name in layers if name),
        preprocessing=options.pop("preprocessing", None) or _overrides(overrides),
        columns=options.pop("columns", None) or Columns(**columns),
        **options,
    )


def _overrides(values: dict) -> dict | None:
    """Preprocessing replacements in run.json's form: enum values as text, mean/std as three floats
    (given as a sequence or as 'r,g,b')."""
    for name in ("mean", "std"):
        if isinstance(values.get(name), str):
            values[name] = tuple(float(v) for v in values[name].split(","))
        if name in values and len(values[name]) != 3:
            raise InvalidInputError(f"{name} needs three numbers, e.g. 0.5,0.5,0.5 (got {values[name]})")
    return {key: getattr(value, "value", value) for key, value in values.items()} or None
