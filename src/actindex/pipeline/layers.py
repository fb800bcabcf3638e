"""Select layers by their PyTorch names, with globs, and describe what they output.

    names = resolve_layers(model, ["layer*", "fc"])   # ['layer1', 'layer2', 'layer3', 'layer4', 'fc']
    infos = describe_layers(model, names, (224, 224))   # type, channels, feature-map size per layer

In a pattern `*` matches within one dotted component (`layer*` is layer1..layer4, not layer1.0.conv1)
and `**` matches across dots (`features.**`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from actindex.pipeline.errors import InvalidInputError, UnknownNameError
from actindex.pipeline.geometry import LayerInfo
from actindex.pipeline.patterns import pattern_regex
from actindex.pipeline.receptive_field import compute_receptive_fields

if TYPE_CHECKING:
    import torch


def module_names(model: torch.nn.Module) -> list[str]:
    """Hookable module names: TorchScript submodules cannot carry forward hooks, so they are left out."""
    import torch

    return [name for name, m in model.named_modules() if name and not isinstance(m, torch.jit.ScriptModule)]


def resolve_layers(model: torch.nn.Module, patterns: Sequence[str], model_name: str = "MODEL") -> list[str]:
    """Names matched by `patterns`, in module order, each once; an unmatched pattern raises LookupError."""
    names = module_names(model)
    chosen: set[str] = set()
    for pattern in patterns:
        regex = pattern_regex(pattern)
        matched = [name for name in names if regex.match(name)]
        if not matched:
            close = difflib.get_close_matches(pattern.replace("*", ""), names, n=5, cutoff=0.4)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UnknownNameError(f"layer {pattern!r} not found; {hint}see: actindex layers {model_name}")
        chosen.update(matched)
    return [name for name in names if name in chosen]


def describe_layers(
    model: torch.nn.Module, names: Sequence[str], input_size: tuple[int, int]
) -> dict[str, LayerInfo]:
    """Run one zeros image through `model` and report each named layer's output shape."""
    modules = dict(model.named_modules())
    shapes = output_shapes(model, names, input_size)
    return {name: _info(name, type(modules[name]).__name__, shapes.get(name)) for name in names}


def _info(name: str, type_name: str, shape: tuple[int, ...] | None) -> LayerInfo:
    if shape is None:
        raise InvalidInputError(
            f"layer {name!r} ({type_name}) produced no tensor output; choose another layer"
        )
    if len(shape) == 4:
        return LayerInfo(name, type_name, shape[1], shape[2], shape[3])
    if len(shape) == 2:
        return LayerInfo(name, type_name, shape[1], 1, 1)
    raise InvalidInputError(
        f"layer {name!r} ({type_name}) outputs shape {shape}; only (B, C, H, W) and (B, C) work"
    )


def output_shapes(model: torch.nn.Module, names: Sequence[str], input_size: tuple[int, int]) -> dict:
    """{name: output shape} from one zeros image; modules that return no tensor are left out."""
    import torch

    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(output.shape)

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def output_layers(model: torch.nn.Module, input_size: tuple[int, int]) -> tuple[str, ...]:
    """The layers whose output is the model's output itself, a (B, C) tensor such as the logits, in module
    order (a Sequential head and its last Linear both are); () when the model returns anything else."""
    import torch

    outputs: dict[str, torch.Tensor] = {}  # (B, C) outputs only: kept alive, so identity is never reused

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 2:
                outputs.setdefault(name, output)

        return record

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook(name)) for name in module_names(model)]
    try:
        with torch.no_grad():
            result = model.eval()(torch.zeros(1, 3, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    return tuple(name for name in module_names(model) if outputs.get(name) is result)


def describe_all(
    model: torch.nn.Module, pattern: str, input_size: tuple[int, int], rf_gates: str = "constant"
) -> list:
    """[(LayerInfo, ReceptiveField)] for every layer matching `pattern` whose output is 4-D or 2-D;
    `rf_gates` as compute_receptive_fields' gates."""

    regex = pattern_regex(pattern)
    modules = dict(model.named_modules())
    names = [name for name in module_names(model) if regex.match(name)]
    shapes = output_shapes(model, names, input_size)
    usable = [name for name in names if len(shapes.get(name, ())) in (2, 4)]
    rfs = compute_receptive_fields(model, usable, input_size, gates=rf_gates) if usable else {}
    return [(_info(name, type(modules[name]).__name__, shapes[name]), rfs[name]) for name in usable]
