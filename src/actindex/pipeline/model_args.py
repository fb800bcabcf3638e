"""The checks on a --model / --weights pair that need no model: torch is not imported.

    check_model_args("python:mypkg.nets:build", None, trust_code=False)   # raises UntrustedCodeError

Run by pipeline.models.load_model, and by the job's request before anything starts, so that these
mistakes are reported at once, not after a cluster has started and loaded the model.
"""

from __future__ import annotations

import os

from actindex.pipeline.errors import MissingInputError, UserError
from actindex.pipeline.options import Option

MODEL = Option("torchvision name, timm:NAME, efficientnet_lite0, tiny_conv, or a TorchScript file.")
TRUST_CODE = Option("Allow models that execute code when loaded: TorchScript files, python: specs.")

BUILTIN_EFFICIENTNET = "efficientnet_lite0"
TINY_CONV = "tiny_conv"  # two small convolutions at 64 px: a forward that costs almost nothing (bench --host)
TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".torchscript", ".jit")


class UntrustedCodeError(UserError, PermissionError):
    """The model would execute code when loaded, and trust_code was not given."""


def check_model_args(name: str, weights: str | None, trust_code: bool) -> None:
    """TorchScript files and python: factories execute code when loaded: they need `trust_code`; a
    weights file must exist."""
    if not trust_code and (name.startswith("python:") or name.endswith(TORCHSCRIPT_SUFFIXES)):
        raise UntrustedCodeError(
            f"loading {name!r} executes code from it; pass --trust-code if you trust its source"
        )
    if weights is not None and weights != "DEFAULT" and not os.path.isfile(weights):
        raise MissingInputError(
            f"weights file {weights!r} does not exist (pass a .pth state dict or DEFAULT)"
        )
