"""A copy of a model laid out for attribution on the CPU: batch norms folded into their convolutions,
weights channels-last, parameters frozen. Optional: every function here takes the caller's model as well.

    model = torchvision.models.resnet18().eval()
    fast = prepare(model, keep=["layer4", "layer3"])     # the layers the calls will read stay as they are
    out = project(fast, "layer4", torch.randn(1, 3, 64, 64), Targets(image=[0], unit=[3], y=[1], x=[1]))

Why. On ResNet-50 at 224 px (2 threads), the backward of an eval-mode BatchNorm2d costs about a third of a
projection's backward (native_batch_norm_backward reads the input and the signal, a 1x1 affine map would
need neither), and oneDNN's convolutions run about 10% faster on channels-last tensors. A BatchNorm2d in
eval mode is the affine map y = (x - mean) / sqrt(var + eps) * weight + bias, so a BatchNorm2d whose input
is a Conv2d's output, used by nothing else, is folded into that Conv2d (torch.nn.utils.fusion) and replaced
by an Identity of the same name: every named output is unchanged (to float32 rounding), except a folded
Conv2d's, which is why the layers in `keep` are never folded.

Which pairs. The model is traced with torch.fx to find them; a model fx cannot trace (data-dependent control
flow) raises, naming the reason; prepare(model, fold=False) then skips folding. Only exact BatchNorm2d
modules are folded: norms that carry an activation (timm's BatchNormAct2d) stay, as do convolutions called
more than once in a forward.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

from actindex.pipeline.attribution.trace import find_module
from actindex.pipeline.errors import InvalidInputError

if TYPE_CHECKING:
    from torch import nn


def prepare(model: nn.Module, keep: Sequence[str] = (), fold: bool = True) -> nn.Module:
    """An eval-mode, frozen, channels-last copy of `model`, batch norms folded (`fold`) except into the
    layers of `keep`; the caller's model is left as it is."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for name in keep:
        find_module(model, name)  # an unknown name raises here, not after the copy
    prepared = copy.deepcopy(model).eval().requires_grad_(False)
    if fold:
        modules = dict(prepared.named_modules())
        for conv_name, bn_name in foldable_pairs(prepared, set(keep)):
            _replace(prepared, conv_name, fuse_conv_bn_eval(modules[conv_name], modules[bn_name]))
            _replace(prepared, bn_name, nn.Identity().eval())
    return prepared.to(memory_format=torch.channels_last)


def foldable_pairs(model: nn.Module, keep: set[str]) -> list[tuple[str, str]]:
    """(conv, batch norm) names where the norm's only input is the conv's output and nothing else uses it."""
    import torch
    from torch import nn

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:  # fx raises many kinds (TraceError, TypeError, ...) for untraceable code
        raise InvalidInputError(
            f"torch.fx cannot trace {type(model).__name__} to find its conv + batch norm pairs "
            f"({type(error).__name__}: {error}); use prepare(model, fold=False)"
        ) from error
    modules = dict(model.named_modules())
    calls = [node.target for node in graph.nodes if node.op == "call_module"]
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
            and calls.count(source.target) == 1
            and calls.count(node.target) == 1
            and modules[node.target].running_mean is not None  # else eval mode uses the batch's statistics
            and source.target not in keep
        ):
            pairs.append((source.target, node.target))
    return pairs


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
