"""The index job's configuration: built by the CLI (or by hand), validated here, read by `jobs.index`.

config = IndexConfig(source="photos/", out="idx/", model="resnet18", layers=("layer*",), k=9)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.decode import DEFAULT_MAX_PIXELS
from pipeline.preprocess import Preprocessing

EXECUTORS = ("ray", "local")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class IndexConfig:
    source: str  # image folder (recursive), glob, or .txt/.csv list of paths
    out: str  # index directory (created if missing)
    layers: tuple[str, ...]  # named_modules() names or globs ('layer*', 'features.**')
    model: str = "resnet50"  # torchvision name, timm:NAME, efficientnet_lite0, or a TorchScript file
    weights: str | None = None  # None = the model's default (random, or built-in); "DEFAULT"; a .pth file
    k: int = 100  # images kept per unit in the topk table
    batch_size: int | None = None  # images per forward pass; None = 256 on GPU workers, 32 on CPU ones
    shard_size: int = 1024  # images per shard (unit of output files and of resume)
    preprocessing: Preprocessing | None = None  # None = the model's own
    executor: str = "ray"  # "ray" (local Ray started if no address) or "local" (plain loop, no Ray)
    address: str | None = None  # Ray cluster address; None = RAY_ADDRESS or a new local Ray
    device: str = "auto"  # auto = cuda when available
    workers: int | None = None  # model actors; None = one per GPU, or one CPU actor
    overwrite: bool = False  # clear an index made with other parameters instead of refusing
    prune: bool = False  # drop indexed images that are no longer in the dataset
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are recorded as errors ("too large")
    trust_code: bool = False  # allow models that execute code when loaded (TorchScript, python:)
    precision: str = "auto"  # auto (bf16 on GPU workers, fp32 on CPU ones), bf16, fp16, fp32
    compile: bool = False  # torch.compile the forward + reductions on GPU workers
    device_decode: bool | None = None  # decode JPEGs on the model's device (nvjpeg); None = on GPUs only
    progress: bool = True  # show a progress bar
    extra: dict = field(default_factory=dict)  # free-form notes stored in run.json

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if not self.layers:
            raise ValueError("choose at least one layer (--layers); see: actindex layers MODEL")
        if self.k < 1:
            raise ValueError(f"k must be at least 1 (got {self.k})")
        if (self.batch_size is not None and self.batch_size < 1) or self.shard_size < 1:
            raise ValueError(
                f"batch_size ({self.batch_size}) and shard_size ({self.shard_size}) must be positive"
            )
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor {self.executor!r} is not one of {', '.join(EXECUTORS)}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.executor == "local" and self.address:
            raise ValueError("--address joins a Ray cluster; it cannot be combined with --executor local")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive (got {self.max_pixels})")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1 (got {self.workers})")
