"""Forward passes that stop at a layer, hooks that always detach, and the one-hot seeds of backward passes.

    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    module = find_module(model, "layer4")          # unknown names raise, naming the nearest real ones
    with frozen(model):                            # parameters need no gradient inside: none is computed
        out = forward_to(model, module, "layer4", x)   # (2, 512, 2, 2); the layers after layer4 never run
    seed = one_hot(out, pos=[0, 1], unit=[7, 3], y=[1, 0], x=[1, 0])   # d(out[p, u, y, x]) for each row
    values = peak_values(out, pos=[0, 1], unit=[7, 3], y=[1, 0], x=[1, 0])

Its hooks are pipeline.recorder's (ForwardHooks, StopForward: a reused module records its first call).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from actindex.pipeline.errors import InvalidInputError, UnknownNameError
from actindex.pipeline.recorder import ForwardHooks, StopForward

if TYPE_CHECKING:
    import torch


class LayerCapture(ForwardHooks):
    """Keep `module`'s first output in this forward and stop there; `replace`, if given, maps that output
    to the tensor the rest of the network sees (and `output` is then the replacement)."""

    def __init__(self, module: torch.nn.Module, stop: bool = True, replace: Callable | None = None):
        self.module, self.stop, self.replace = module, stop, replace
        self.output: torch.Tensor | None = None

    def _attach(self) -> list:
        return [self.module.register_forward_hook(self._hook)]

    def _hook(self, _module, _inputs, output):
        import torch

        if self.output is not None:  # a module reused in one forward (resnet's relu): its first call counts
            return None
        if not isinstance(output, torch.Tensor):
            raise InvalidInputError(f"layer output is a {type(output).__name__}, not a tensor")
        self.output = self.replace(output) if self.replace else output
        if self.stop:
            raise StopForward
        return self.output if self.replace else None


def forward_to(model: torch.nn.Module, module: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """`module`'s output for input `x`; the forward stops there."""
    with LayerCapture(module) as capture:
        model(x)
    if capture.output is None:
        raise RuntimeError(f"layer {name!r} was not reached by the forward pass")
    return capture.output


def find_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module called `name` (named_modules() path); an unknown name raises with the nearest real ones."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    near = difflib.get_close_matches(name, [key for key in modules if key], n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise UnknownNameError(f"layer {name!r} is not a module of this model{hint}")


def check_eval(model: torch.nn.Module) -> None:
    """Refuse a model in training mode: batch norm would mix the images of a pass, dropout drop units."""
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise InvalidInputError(
            f"the model is in training mode ({training[0]}{' and others' if len(training) > 1 else ''}): "
            "call model.eval() first"
        )


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Parameters need no gradient inside (restored on exit): autograd then records and computes only what
    leads to the tensors that do need one (the input, or a layer's output made a leaf)."""
    thawed = [param for param in model.parameters() if param.requires_grad]
    for param in thawed:
        param.requires_grad_(False)
    try:
        yield model
    finally:
        for param in thawed:
            param.requires_grad_(True)


def as_model_input(images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """float32 images, channels-last when the model's first 4-D weight is (the layout its convs run in)."""
    import torch

    x = torch.as_tensor(images, dtype=torch.float32)
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    channels_last = weight is not None and weight.stride(1) == 1 and weight.dim() == 4
    if channels_last and weight.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def _index(output: torch.Tensor, pos, unit, y, x) -> tuple:
    import torch

    as_long = [torch.as_tensor(v, dtype=torch.long, device=output.device) for v in (pos, unit, y, x)]
    return tuple(as_long) if output.dim() == 4 else tuple(as_long[:2])


def one_hot(output: torch.Tensor, pos: Sequence[int], unit: Sequence[int], y, x) -> torch.Tensor:
    """The backward seed selecting output[pos[i], unit[i], y[i], x[i]] for each i (one per image)."""
    import torch

    seed = torch.zeros_like(output)
    seed[_index(output, pos, unit, y, x)] = 1.0
    return seed


def peak_values(output: torch.Tensor, pos: Sequence[int], unit: Sequence[int], y, x) -> torch.Tensor:
    """output[pos[i], unit[i], y[i], x[i]] (y and x ignored for a (B, C) output), detached, float32."""
    return output.detach()[_index(output, pos, unit, y, x)].float()
