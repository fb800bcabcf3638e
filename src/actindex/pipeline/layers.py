"""Select layers by their PyTorch names, with globs, and describe what they output.

    names = resolve_layers(model, ["layer*", "fc"])   # ['layer1', 'layer2', 'layer3', 'layer4', 'fc']
    infos = describe_layers(model, names, (224, 224))   # type, channels, feature-map size per layer
    container_notes(model, ["block*"])   # a glob that matched `blocks`, a module of modules, says so
    rows, skipped = describe_all(model, "**", (224, 224))   # what `actindex layers` lists, what it leaves out

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


def container_notes(model: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    """One line per glob in `patterns` that matched containers (modules with children: their output is
    their last child's), naming them and the glob of the modules inside them. Exact names are meant."""
    modules = dict(model.named_modules())
    names = module_names(model)
    notes = []
    for pattern in (p for p in patterns if any(char in p for char in "*?[")):
        regex = pattern_regex(pattern)
        found = [name for name in names if regex.match(name) and any(True for _ in modules[name].children())]
        if found:
            what = f"{found[0]}, a container of {len(list(modules[found[0]].children()))} modules"
            if len(found) > 1:
                what = f"{len(found)} containers ({_names(found)})"
            notes.append(
                f"--layers {pattern!r} matched {what}: a container's output is that of the last module "
                f"inside it; for the modules inside, use --layers '{pattern}.*'"
            )
    return notes


def _names(names: Sequence[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")


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
    """{name: output shape} from one zeros image, the first call's where a module runs several times; None
    for a module that returned no tensor (a tuple, None); modules that did not run are left out."""
    import torch

    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...] | None] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if shapes.get(name) is None:
                shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

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
) -> tuple[list, list[str]]:
    """([(LayerInfo, ReceptiveField)] for every layer matching `pattern` whose output is 4-D or 2-D, [one
    line per kind of module left out, saying why and which]); `rf_gates` as compute_receptive_fields'."""

    regex = pattern_regex(pattern)
    modules = dict(model.named_modules())
    names = [name for name in module_names(model) if regex.match(name)]
    shapes = output_shapes(model, names, input_size)
    usable = [name for name in names if len(shapes.get(name) or ()) in (2, 4)]
    rfs = compute_receptive_fields(model, usable, input_size, gates=rf_gates) if usable else {}
    rows = [(_info(name, type(modules[name]).__name__, shapes[name]), rfs[name]) for name in usable]
    return rows, _skipped(names, shapes)


# why `actindex layers` leaves a module out, by what it outputs (its rank, "none" or "absent")
_SKIPPED = {
    3: "output (B, N, C) token sequences (e.g. {shape}), not feature maps (B, C, H, W) or vectors (B, C)",
    "none": "return no tensor (a tuple, a list or None)",
    "absent": "are not called by the model's forward pass (it may use their weights directly)",
}
_SKIPPED_OTHER = "output tensors such as {shape}: neither feature maps (B, C, H, W) nor vectors (B, C)"


def _skipped(names: list[str], shapes: dict) -> list[str]:
    """Why each module of `names` that is not 4-D or 2-D was left out, one line per reason."""
    found: dict[str | int, list[str]] = {}
    for name in names:
        shape = shapes.get(name, ())
        kind = "absent" if name not in shapes else "none" if shape is None else len(shape)
        if kind not in (2, 4):
            found.setdefault(kind, []).append(name)
    return [
        f"skipped {len(modules)} modules that "
        f"{_SKIPPED.get(kind, _SKIPPED_OTHER).format(shape=shapes.get(modules[0]))}: {_names(modules)}"
        for kind, modules in found.items()
    ]
