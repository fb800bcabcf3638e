"""Backward rules of the pixel projections (deconvnet, guided backpropagation, gradient), and the check that
no nonlinearity is left without one.

    model = torchvision.models.alexnet().eval()
    x = torch.randn(1, 3, 96, 96, requires_grad=True)
    with BackwardRules(model, "guided") as rules:   # zennit hooks on the activation modules; always detach
        with rules.audit():                         # the forward: raises at a nonlinearity with no rule
            out = forward_to(model, model.features[11], "features.11", x)
        grad = torch.autograd.grad(out[0, 5, 2, 2], x)[0]   # the backward follows the rules

The rules come from zennit (zennit.rules.ReLUDeconvNet and ReLUGuidedBackprop, applied through a
zennit.composites.LayerMapComposite, LGPL-3.0): the same rules as Captum's Deconvolution and GuidedBackprop
(tests/test_projection.py checks them against Captum and against Zeiler & Fergus's rule written out), but
the composite maps any module type to a rule through its public API and leaves the forward and the
backward to us, so one pass can explain many (unit, image) rows.

What each module does to the backward signal g (x: the module's input in the forward):

| module                                  | deconvnet            | guided                       | gradient   |
|-----------------------------------------|----------------------|------------------------------|------------|
| ReLU, ReLU6 (in place or not; reused)   | relu(g)              | f'(x) * g * [g > 0]          | f'(x) * g  |
| SiLU, GELU, Hardswish, Mish, LeakyReLU, | relu(g), as ReLU     | f'(x) * g * [g > 0], as ReLU | f'(x) * g  |
|   ELU (smooth rectifiers)               |                      |                              |            |
| Sigmoid, Hardsigmoid with a (B, C, 1, 1)| 0: no signal enters  | 0, as deconvnet              | gradient   |
|   or (B, C) output (squeeze-excite gate)| the gate's branch    |                              |            |
| max pooling                             | switches (its gradient: to the max of each window)         |
| conv, linear, batch/layer/group norm,   | their gradient (linear maps, and norms with their exact    |
|   average pooling, sums, products       | gradient, statistics included)                              |
| any other nonlinearity on the path      | raises UnsupportedActivationError                   | gradient   |

f'(x) is the module's own derivative: for ReLU6 it is 0 where x <= 0 or x >= 6, so guided passes nothing
through a saturated ReLU6, as its gradient does not; deconvnet ignores the forward at every rectifier, as
Zeiler & Fergus's does. A gate (the sigmoid of a squeeze-excite block) keeps its forward value as a
constant factor on the map it scales, and no signal goes up its branch (the pooled map it is computed from),
as pipeline.geometry treats such gates as constants for receptive fields; a sigmoid whose output has spatial
extent is not a gate and has no rule.

The audit. zennit, like Captum, hooks modules: a nonlinearity called as a function (F.relu in a block's
forward, x.sigmoid(), a custom GELU built from erf) would silently keep its plain gradient. While a forward
runs inside `audit()`, a TorchFunctionMode sees every torch call; one of NONLINEAR on a tensor that needs a
gradient, made outside a module that has a rule, raises UnsupportedActivationError naming the function and
the module that called it. It cannot see nonlinearities built from comparisons and torch.where.
"""

from __future__ import annotations

import functools
import types
from contextlib import AbstractContextManager, nullcontext
from enum import Enum
from typing import TYPE_CHECKING

from actindex.pipeline.errors import InvalidInputError, UnsupportedActivationError
from actindex.pipeline.recorder import ForwardHooks

if TYPE_CHECKING:
    import torch
    from torch import nn
    from zennit.composites import LayerMapComposite


class Method(str, Enum):
    """How the value of a unit is projected to the input pixels."""

    deconvnet = "deconvnet"  # Zeiler & Fergus 2014: the signal rectified at each ReLU, max-pool switches
    guided = "guided"  # Springenberg et al. 2015: the gradient, rectified at each ReLU
    gradient = "gradient"  # the plain gradient (Simonyan et al. 2014)


METHODS = tuple(item.value for item in Method)

# torch.nn module types, by name (torch is imported where rules are applied, not with this module)
RECTIFIERS = ("ReLU", "ReLU6")  # the published rules
SMOOTH_RECTIFIERS = ("SiLU", "GELU", "Hardswish", "Mish", "LeakyReLU", "ELU")  # ruled as ReLU
GATES = ("Sigmoid", "Hardsigmoid")  # ruled only where the output is a per-channel gate

# torch functions (and Tensor methods) that are nonlinear elementwise maps or softmaxes: one called outside
# a ruled module, on a tensor that needs a gradient, has no rule
NONLINEAR = frozenset(
    ["relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu",
     "selu_", "celu", "celu_", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_",
     "logsigmoid", "tanh", "tanh_", "softplus", "softsign", "tanhshrink", "hardshrink", "softshrink",
     "threshold", "threshold_", "prelu", "rrelu", "rrelu_", "glu", "softmax", "log_softmax", "softmin",
     "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "maximum",
     "minimum", "erf", "exp", "exp_"]
)  # fmt: skip


def to_method(method: str | Method) -> Method:
    try:
        return Method(method)
    except ValueError:
        raise InvalidInputError(f"method {method!r} is not one of {', '.join(METHODS)}") from None


def module_types(names: tuple[str, ...]) -> tuple[type, ...]:
    """The torch.nn classes called `names`."""
    from torch import nn

    return tuple(getattr(nn, name) for name in names)


@functools.cache
def _stop_gate() -> type:
    """zennit rule for a squeeze-excite gate: no signal goes into the gate's branch."""
    import torch
    from zennit.core import Hook

    class StopGate(Hook):
        def backward(self, module, grad_input, grad_output):
            return tuple(torch.zeros_like(grad) for grad in grad_input)

    return StopGate


def composite(method: Method) -> LayerMapComposite:
    """The zennit composite of a rectifying method (deconvnet or guided)."""
    from zennit.composites import LayerMapComposite
    from zennit.rules import ReLUDeconvNet, ReLUGuidedBackprop

    rule = ReLUDeconvNet() if method is Method.deconvnet else ReLUGuidedBackprop()
    rectifiers = module_types(RECTIFIERS + SMOOTH_RECTIFIERS)
    return LayerMapComposite(layer_map=[(rectifiers, rule), (module_types(GATES), _stop_gate()())])


class BackwardRules(ForwardHooks):
    """Context manager: the model's backward follows `method`'s rules inside; hooks always detach."""

    def __init__(self, model: nn.Module, method: str | Method):
        self.model, self.method = model, to_method(method)
        self._stack: list[tuple[str, nn.Module]] = []  # the modules whose forward is running
        self._ruled = 0  # how many of them have a rule

    def _attach(self) -> list:
        if self.method is Method.gradient:
            return []
        rules = composite(self.method)
        rules.register(self.model)
        handles = [types.SimpleNamespace(remove=rules.remove)]
        for name, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(name)))
            handles.append(module.register_forward_hook(self._leave))
        return handles

    def audit(self) -> AbstractContextManager:
        """Wrap the forward (not the backward) in this: it raises at a nonlinearity that has no rule."""
        self._stack.clear()
        self._ruled = 0
        return nullcontext() if self.method is Method.gradient else _audit(self)

    def _enter(self, name: str):
        def hook(module, _inputs):
            self._stack.append((name, module))
            self._ruled += _has_rule(module)

        return hook

    def _leave(self, module, _inputs, output) -> None:
        if isinstance(module, module_types(GATES)) and not _is_gate(output):
            name = self._stack[-1][0]
            raise UnsupportedActivationError(
                f"{type(module).__name__} at {name!r} outputs a map of shape {tuple(output.shape)}, not a "
                f"per-channel gate (B, C, 1, 1): {self.method.value} has no rule for a sigmoid activation; "
                "use method='gradient'"
            )
        self._stack.pop()
        self._ruled -= _has_rule(module)

    def inside_rule(self) -> bool:
        """Whether the forward is inside a module that has a rule (whose own torch calls are its rule's)."""
        return self._ruled > 0

    def unsupported(self, function: str) -> UnsupportedActivationError:
        name, module = self._stack[-1] if self._stack else ("", self.model)
        ruled = ", ".join(RECTIFIERS + SMOOTH_RECTIFIERS + GATES)
        return UnsupportedActivationError(
            f"{function}() is called in {name or 'the model'!r} ({type(module).__name__}), outside the "
            f"modules that {self.method.value} has rules for ({ruled}): its signal would pass as the plain "
            "gradient. Use a module of one of those types (nn.ReLU rather than F.relu), add a rectifier's "
            "type to attribution.rules.SMOOTH_RECTIFIERS, or use method='gradient'"
        )


def _has_rule(module: nn.Module) -> bool:
    return isinstance(module, module_types(RECTIFIERS + SMOOTH_RECTIFIERS + GATES))


def _is_gate(output: torch.Tensor) -> bool:
    return output.dim() == 2 or (output.dim() == 4 and output.shape[2] == output.shape[3] == 1)


def _audit(rules: BackwardRules):
    """A TorchFunctionMode that sees every torch call of the forward and refuses a nonlinear one that no rule
    covers."""
    return _audit_class()(rules)


@functools.cache
def _audit_class() -> type:
    from torch.overrides import TorchFunctionMode

    class Audit(TorchFunctionMode):  # defined here: torch is imported when rules are applied
        def __init__(self, rules: BackwardRules):
            super().__init__()
            self.rules = rules

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in NONLINEAR and not self.rules.inside_rule() and _needs_grad(args, kwargs):
                raise self.rules.unsupported(name)
            return func(*args, **kwargs)

    return Audit


def _needs_grad(args: tuple, kwargs: dict) -> bool:
    import torch

    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in (*args, *kwargs.values()))
