"""The checks on a --model / --weights pair that need no model: torch is not imported.

    check_model_args("python:mypkg.nets:build", None, trust_code=False)   # raises UntrustedCodeError
    weights_label("resnet50", None)            # "DEFAULT": torchvision and timm models are pretrained
    weights_label("resnet50", "random")        # "random": a random network, only when asked for

Run by pipeline.models.load_model, and by the job's request before anything starts, so that these
mistakes are reported at once, not after a cluster has started and loaded the model.

What --weights means, by model:

  torchvision NAME, timm:NAME   none or DEFAULT: the pretrained weights (torchvision's DEFAULT, timm's default
                                tag), from the torch or Hugging Face cache, downloaded there when missing
  efficientnet_lite0            none or DEFAULT: its built-in ImageNet weights (shipped in a package)
  tiny_conv                     none: a random network (seeded); it has no trained weights (bench --host)
  a TorchScript file, python:   none: the model's own (the file's, the factory's)
  every model                   FILE.pth: a state dict loaded into it
  all but TorchScript, python:  random: a random network, seeded (RANDOM_SEED), on purpose

A random network is never what a run gets without asking: it is recorded as weights "random", and the
job's plan, `actindex top`, grids and the report say "random weights".
"""

from __future__ import annotations

import os

from actindex.pipeline.errors import InvalidInputError, MissingInputError, UserError
from actindex.pipeline.options import Option

MODEL = Option("torchvision name, timm:NAME, efficientnet_lite0, tiny_conv, or a TorchScript file.")
TRUST_CODE = Option("Allow models that execute code when loaded: TorchScript files, python: specs.")
WEIGHTS = Option(
    "Default: the pretrained weights (torchvision's DEFAULT, timm's default tag; downloaded into the torch "
    "or Hugging Face cache where missing), efficientnet_lite0's built-in ones, a TorchScript or python: "
    "model's own. FILE.pth: a state dict. random: a random network (seeded), on purpose."
)

BUILTIN_EFFICIENTNET = "efficientnet_lite0"
TINY_CONV = "tiny_conv"  # two small convolutions at 64 px: a forward that costs almost nothing (bench --host)
TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".torchscript", ".jit")
RANDOM = "random"  # --weights random, and the label recorded for a random network
# what is recorded for weights that are not a file: run.json's params["weights"]
OWN_WEIGHTS = ("DEFAULT", "builtin", "torchscript", "factory")


class UntrustedCodeError(UserError, PermissionError):
    """The model would execute code when loaded, and trust_code was not given."""


def brings_own_weights(name: str) -> bool:
    """TorchScript files and python: factories: their weights are their own (no DEFAULT, no random)."""
    return name.startswith("python:") or name.endswith(TORCHSCRIPT_SUFFIXES)


def check_model_args(name: str, weights: str | None, trust_code: bool) -> None:
    """TorchScript files and python: factories execute code when loaded: they need `trust_code`, and have
    no random weights; a weights file must exist."""
    if not trust_code and brings_own_weights(name):
        raise UntrustedCodeError(
            f"loading {name!r} executes code from it; pass --trust-code if you trust its source"
        )
    if weights == RANDOM and brings_own_weights(name):
        raise InvalidInputError(
            f"--weights random builds a random network of a torchvision, timm or built-in model; {name!r} "
            "brings its own weights: drop --weights, or pass a state dict (--weights FILE.pth)"
        )
    if weights is not None and weights not in ("DEFAULT", RANDOM) and not os.path.isfile(weights):
        raise MissingInputError(
            f"weights file {weights!r} does not exist (pass a .pth state dict, DEFAULT, or random)"
        )


def weights_label(name: str, weights: str | None) -> str:
    """What run.json records for model `name` loaded with `weights` (--weights; None: the default): "DEFAULT",
    "builtin", "torchscript", "factory" (a python: model's own), "random", or the state-dict file."""
    if weights not in (None, "DEFAULT"):
        return weights
    if name == TINY_CONV:
        return RANDOM  # its only weights: a seeded random network
    if name.startswith("python:"):
        return "factory"
    if name.endswith(TORCHSCRIPT_SUFFIXES):
        return "torchscript"
    return "builtin" if name == BUILTIN_EFFICIENTNET else "DEFAULT"


def weights_to_load(name: str, recorded: str) -> str | None:
    """The --weights that loads the weights an index recorded (`recorded`, its params["weights"]) again.
    (Indexes made before "factory" existed recorded a python: model's own weights as "random".)"""
    if recorded in OWN_WEIGHTS or (recorded == RANDOM and brings_own_weights(name)):
        return None
    return recorded


def random_weights(params: dict) -> bool:
    """Whether an index (run.json's params) was computed with a random network: what the job's plan, `actindex
    top`, grids and the report say."""
    return params.get("weights") == RANDOM and not brings_own_weights(params.get("model", ""))


def weights_text(name: str, weights: str) -> str:
    """Recorded weights (weights_label's) as a reader is told them: 'pretrained weights (DEFAULT)', 'random
    weights (--weights random, seeded)', ..."""
    if weights == RANDOM and not brings_own_weights(name):
        return "random weights (--weights random, seeded)"
    return {
        "DEFAULT": "pretrained weights (DEFAULT)",
        "builtin": "built-in ImageNet weights",
        "torchscript": "the TorchScript file's own weights",
        "factory": "the python: factory's own weights",
        RANDOM: "the python: factory's own weights",  # an index made before "factory" was recorded
    }.get(weights, f"weights from {weights}")
