"""Receptive fields of CNN feature positions, in model-input pixel coordinates.

Usage::

    >>> import numpy as np
    >>> import torchvision
    >>> from actindex.pipeline.receptive_field import boxes, compute_receptive_fields
    >>> model = torchvision.models.resnet50(weights=None)
    >>> rfs = compute_receptive_fields(model, ["layer3", "layer4", "fc"], input_size=(224, 224))
    >>> rf = rfs["layer4"]
    >>> (rf.size_y, rf.jump_y, rf.start_y)
    (427, 32, -213)
    >>> rf.box(3, 3)  # (x0, y0, x1, y1), x1/y1 exclusive, may reach outside the image
    (-117, -117, 310, 310)
    >>> rf.clipped_box(3, 3, 224, 224)
    (0, 0, 224, 224)
    >>> boxes(rfs["layer3"], np.array([0, 13]), np.array([0, 13])).tolist()
    [[-133, -133, 134, 134], [75, 75, 342, 342]]
    >>> rfs["fc"].is_global, rfs["fc"].box(0, 0)
    (True, (0, 0, 224, 224))

How it works: one forward pass of the model on a zeros image of the requested size runs under a
``TorchDispatchMode`` that sees every aten op and attaches a receptive-field annotation to each output
tensor derived from the image; forward hooks read the annotation of each requested module's output.
Because the real graph runs, residual adds, concatenations, asymmetric and input-size-dependent padding
(timm's TF "same" padding), ceil-mode pooling and dilation are all accounted for.

Per spatial axis an annotation is ``(jump, start, end)``: feature position ``i`` covers input pixels
``start + i * jump ... end + i * jump`` (inclusive); ``start`` may be negative and ``end`` may exceed the
image where padding is read.

Each annotation also records which tensor dims hold the image's rows and columns, so layout ops keep the
mapping: permute/transpose moving channels (NHWC), reshapes moving or merging channels, batch and positions
folded into the rows of a matmul and back (a Linear on an NHWC map), channels-last LayerNorm, contiguous.

Gates: a squeeze-excitation gate, a (B, C, 1, 1) tensor from a global reduction over the spatial axes
(mean, sum, adaptive pooling), possibly through 1x1 convs and activations, multiplied into a feature map,
is recognised by that shape and origin (not by module names). With ``gates="constant"`` (the default) the
product keeps the feature map's receptive field and the layer gets ``global_context=True``: the gate scales
channels but moves no spatial evidence, so boxes follow the spatial path, as effective-receptive-field
analyses do. ``gates="strict"`` makes such products global::

    >>> m = torchvision.models.efficientnet_b0(weights=None)
    >>> [(rf.size_y, rf.is_global, rf.global_context)
    ...  for rf in compute_receptive_fields(m, ["features.3"], (224, 224)).values()]
    [(67, False, True)]
    >>> compute_receptive_fields(m, ["features.3"], (224, 224), gates="strict")["features.3"].is_global
    True

Multi-branch nets (Inception, GoogLeNet, DenseNet, ResNet-D shortcuts): a concatenation or sum takes the
union of its branches per axis, so height and width may differ (a 1x7 branch next to a 3x1 one). Inception's
``transform_input`` (a per-channel affine of the image) keeps positions. The boxes match a gradient probe
exactly for torchvision densenet121, googlenet and inception_v3 and timm's resnet50d, except at the bottom
and right edge when a valid strided convolution or pool drops the last pixels (inception_v3's stem at
e.g. 76, 78-81 px; 75, 77, 83 and 85 are exact): padding read further on extends the edge box over pixels
nothing reads, a superset like those below.

"Global" layers: when every position depends on the whole image (outputs that are not feature maps such
as ``(B, C)`` from flatten/linear/global pooling, spatial reductions, strict gate products) the
layer is reported with ``is_global=True``, ``size = input size``, ``jump = input size``, ``start = 0``,
and ``box`` / ``boxes`` return the whole image for every position.

Limitations: a box is always a superset of the true dependency but not always tight: boxes are affine
extrapolations, so a position whose window reads only padding (e.g. the last row of a stride-2 conv after
a large bottom pad) still gets a box that may overlap the image although it depends on no pixel, and with
dilation a border position may skip the image pixels nearest the border (a dilation hole) although its
clipped box includes them. Transposed convolutions raise ``NotImplementedError`` (only when a requested
layer depends on one); ops the tracer does not understand (interpolation, group norm, a permute swapping
rows and columns, positions flattened into one dim outside a matmul, ...) make their output global and a
``RuntimeWarning`` names the op. A module called several times reports
its first call, like the recorder (whose forward stops once every chosen layer has been seen).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actindex.pipeline.geometry import ReceptiveField, boxes  # noqa: F401 - part of this module's interface

if TYPE_CHECKING:
    import torch
    from torch.utils.weak import WeakIdKeyDictionary


GATES = ("constant", "strict")


def compute_receptive_fields(
    model: torch.nn.Module, layers: Sequence[str], input_size: tuple[int, int], gates: str = "constant"
) -> dict[str, ReceptiveField]:
    """Receptive field of each named module's output for an input image of ``input_size`` = (H, W).

    ``gates``: "constant" treats channel gates computed from a global pool (squeeze-excitation) as
    constants, so boxes follow the spatial path and ``global_context`` marks the layers they scale;
    "strict" makes every position after such a gate see the whole image."""
    if gates not in GATES:
        raise ValueError(f"gates must be one of {GATES}, got {gates!r}")
    modules = _resolve_layers(model, layers)
    height, width = (int(v) for v in input_size)
    if height < 1 or width < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    records = _trace(model, modules, height, width, gates)
    fields = {}
    for name in modules:  # a loop, not a comprehension, so warnings' stacklevel reaches the caller
        fields[name] = _to_receptive_field(name, records[name], height, width)
    return fields


def _clip(value: int, limit: int) -> int:
    return min(max(value, 0), limit)


# --- internal annotations -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    jump: int
    start: int
    end: int

    def window(self, kernel: int, stride: int, padding: int, dilation: int) -> _Axis:
        # Output i reads input positions i*stride - padding + t*dilation for t in [0, kernel).
        reach = ((kernel - 1) * dilation - padding) * self.jump
        return _Axis(self.jump * stride, self.start - padding * self.jump, self.end + reach)

    def shift(self, offset: int, step: int = 1) -> _Axis:
        # Output i is input position offset + i*step (padding: negative offset; slicing: positive).
        return _Axis(self.jump * step, self.start + offset * self.jump, self.end + offset * self.jump)


@dataclass(frozen=True)
class _Local:
    y: _Axis
    x: _Axis
    dims: tuple[int, int] = (2, 3)  # the tensor dims holding image rows and columns: NCHW (2, 3), NHWC (1, 2)
    merged: tuple[int, int] | None = None  # (H, W) when both axes are folded, innermost, into dim dims[0]
    context: bool = False  # scaled by a gate computed from the whole image (treated as a constant)

    def with_axes(self, y: _Axis, x: _Axis) -> _Local:
        return dataclasses.replace(self, y=y, x=x)


@dataclass(frozen=True)
class _Global:
    reason: str | None = None  # set when global only because an op was not understood: worth a warning
    gate: bool = False  # a (B, C, 1, 1) pool over all positions, or 1x1 convs/activations of one


@dataclass(frozen=True)
class _Unsupported:
    reason: str


_Annotation = _Local | _Global | _Unsupported
_IMAGE = _Local(_Axis(1, 0, 0), _Axis(1, 0, 0))


def _merge_nonlocal(annotations: Sequence[_Annotation], gate: bool = False) -> _Annotation:
    # Global and unsupported are absorbing: anything computed from them inherits them.
    unsupported = [a for a in annotations if isinstance(a, _Unsupported)]
    if unsupported:
        return unsupported[0]
    reasons = [a.reason for a in annotations if isinstance(a, _Global) and a.reason]
    gate = gate and not reasons and all(isinstance(a, _Global) and a.gate for a in annotations)
    return _Global(reasons[0] if reasons else None, gate)


def _union(rfs: Sequence[_Local]) -> _Annotation:
    jumps = sorted({(rf.y.jump, rf.x.jump) for rf in rfs})
    if len(jumps) > 1:
        return _Unsupported(f"cannot merge feature maps with different strides {jumps}")
    y = _Axis(jumps[0][0], min(rf.y.start for rf in rfs), max(rf.y.end for rf in rfs))
    x = _Axis(jumps[0][1], min(rf.x.start for rf in rfs), max(rf.x.end for rf in rfs))
    return dataclasses.replace(rfs[0], y=y, x=x, context=any(rf.context for rf in rfs))


# --- tracing --------------------------------------------------------------------------------------


def _tracer(gates: str = "constant") -> Any:
    """A TorchDispatchMode that annotates every tensor derived from the traced image with its receptive
    field (_tracer_class)."""
    return _tracer_class()(gates)


@functools.cache
def _tracer_class() -> type:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.weak import WeakIdKeyDictionary

    class Tracer(TorchDispatchMode):  # defined here: this module does not import torch at load time
        def __init__(self, gates: str) -> None:
            super().__init__()
            self.gates = gates  # "constant" or "strict" (compute_receptive_fields)
            # Weak, id-keyed: the tensors seen here are the very objects hooks receive; dead ones drop out.
            self.annotations: WeakIdKeyDictionary = WeakIdKeyDictionary()

        def __torch_dispatch__(
            self,
            func: torch._ops.OpOverload,
            types: Sequence[type],
            args: tuple = (),
            kwargs: dict | None = None,
        ) -> Any:
            kwargs = kwargs or {}
            # Read inputs before running: in-place ops (relu_, add_) return their input, re-annotated below.
            inputs = [(t, a) for t in _tensors((args, kwargs)) if (a := self.annotations.get(t)) is not None]
            out = func(*args, **kwargs)
            outputs = _tensors(out)
            if inputs and outputs:
                annotation = _propagate(func, _bind(func, args, kwargs), inputs, outputs[0], self.gates)
                if annotation is not None:
                    for tensor in outputs:
                        self.annotations[tensor] = _for_output(annotation, tensor)
            return out

    return Tracer


def _tensors(tree: Any) -> list[torch.Tensor]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _for_output(annotation: _Annotation, tensor: torch.Tensor) -> _Annotation:
    # Outputs without the spatial dims ((B, C) tensors, batch-norm statistics) see the whole image
    # by definition, whatever made the feature maps before them global or unsupported.
    if isinstance(annotation, _Local):
        return annotation if max(annotation.dims) < tensor.dim() else _Global()
    return _Global() if tensor.dim() < 3 else annotation


def _bind(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    params = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            params[arg.name] = args[i]
        elif arg.name in kwargs:
            params[arg.name] = kwargs[arg.name]
        else:
            params[arg.name] = arg.default_value if arg.has_default_value() else None
    return params


def _trace(
    model: torch.nn.Module, modules: dict[str, torch.nn.Module], height: int, width: int, gates: str
) -> dict[str, list[_Annotation | None]]:
    import torch

    tracer = _tracer(gates)
    records: dict[str, list[_Annotation | None]] = {name: [] for name in modules}
    image = torch.zeros(1, 3, height, width, **_input_placement(model))
    tracer.annotations[image] = _IMAGE
    with _eval_mode(model), _recording_hooks(modules, tracer, records), torch.no_grad(), tracer:
        model(image)
    return records


def _input_placement(model: torch.nn.Module) -> dict[str, Any]:
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    # Per-module flags: a training model may hold deliberately frozen (eval) submodules.
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def _recording_hooks(
    modules: dict[str, torch.nn.Module], tracer: Any, records: dict[str, list[_Annotation | None]]
) -> Iterator[None]:
    handles = [
        module.register_forward_hook(_recorder(name, tracer, records)) for name, module in modules.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _recorder(
    name: str, tracer: Any, records: dict[str, list[_Annotation | None]]
) -> Callable[[torch.nn.Module, Any, Any], None]:
    import torch

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} returns {type(output).__name__}, expected a tensor")
        records[name].append(tracer.annotations.get(output))

    return hook


def _resolve_layers(model: torch.nn.Module, layers: Sequence[str]) -> dict[str, torch.nn.Module]:
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of module names, not a single string")
    named = dict(model.named_modules())
    missing = [name for name in layers if name not in named]
    if missing:
        hints = {name: difflib.get_close_matches(name, list(named), n=5) for name in missing}
        raise LookupError(f"unknown layer(s) {missing}; close matches: {hints}")
    return {name: named[name] for name in layers}


def _to_receptive_field(
    name: str, calls: list[_Annotation | None], height: int, width: int
) -> ReceptiveField:
    if not calls:
        raise ValueError(f"layer {name!r} was not called during the forward pass")
    if len(set(calls)) > 1:
        warnings.warn(
            f"layer {name!r} was called with differing receptive fields; using its first call",
            RuntimeWarning,
            stacklevel=3,
        )
    annotation = calls[0]
    if isinstance(annotation, _Local) and annotation.merged:  # (B*H*W, C) rows: no (y, x) to give boxes for
        annotation = _Global("its output holds the positions folded into one dim (the rows of a matmul)")
    if annotation is None:
        raise ValueError(f"output of layer {name!r} does not depend on the model input")
    if isinstance(annotation, _Unsupported):
        raise NotImplementedError(f"layer {name!r}: {annotation.reason}")
    if isinstance(annotation, _Global):
        if annotation.reason:
            warnings.warn(
                f"layer {name!r}: receptive field set to the whole input because {annotation.reason}",
                RuntimeWarning,
                stacklevel=3,
            )
        return ReceptiveField(height, width, height, width, 0, 0, is_global=True)
    y, x = annotation.y, annotation.x
    size_y, size_x = y.end - y.start + 1, x.end - x.start + 1
    return ReceptiveField(size_y, size_x, y.jump, x.jump, y.start, x.start, False, annotation.context)


# --- propagation rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    func: torch._ops.OpOverload
    params: dict[str, Any]
    inputs: list[tuple[torch.Tensor, _Local]]
    output: torch.Tensor

    def main(self, name: str = "self") -> _Local | _Global:
        """Annotation of the op's main tensor argument (e.g. a conv's input, not its weight)."""
        tensor = self.params[name]
        found = [a for t, a in self.inputs if t is tensor]
        if not found or len(found) < len(self.inputs):
            return _Global(f"{self.func} has image-dependent arguments other than {name!r}")
        return found[0]

    def spatial_axis(self, dim: int, name: str = "self") -> int | None:
        """0 for the y axis, 1 for x, None for a non-spatial dim of the tensor argument ``name``."""
        tensor, rf = next(((t, a) for t, a in self.inputs if t is self.params[name]), self.inputs[0])
        dim = dim % tensor.dim()
        return rf.dims.index(dim) if dim in rf.dims else None


_Handler = Callable[[_Call], _Annotation | None]


def _propagate(
    func: torch._ops.OpOverload,
    params: dict[str, Any],
    inputs: list[tuple[torch.Tensor, _Annotation]],
    output: torch.Tensor,
    gates: str = "constant",
) -> _Annotation | None:
    nonlocal_inputs = [a for _, a in inputs if not isinstance(a, _Local)]
    if not nonlocal_inputs:
        return _handler(func)(_Call(func, params, inputs, output))
    if gates == "constant" and (gated := _gated(_Call(func, params, inputs, output))) is not None:
        return gated
    # A gate stays a gate through 1x1 convs and activations, as long as no feature map joins it.
    gate = len(nonlocal_inputs) == len(inputs) and _is_one_by_one(output)
    return _merge_nonlocal(nonlocal_inputs, gate)


@functools.cache
def _gate_ops() -> tuple:
    import torch

    return (torch.ops.aten.mul, torch.ops.aten.mul_)


def _gated(call: _Call) -> _Annotation | None:
    """A feature map times a gate (see _Global.gate): the gate scales channels, it moves no evidence, so
    the product keeps the map's receptive field, marked as depending on global context. None otherwise."""
    maps = [(t, a) for t, a in call.inputs if isinstance(a, _Local)]
    gates = [t for t, a in call.inputs if isinstance(a, _Global) and a.gate]
    if call.func.overloadpacket not in _gate_ops() or not maps or len(maps) + len(gates) != len(call.inputs):
        return None
    tensor, rf = maps[0]
    out_dims = [d + call.output.dim() - tensor.dim() for d in rf.dims]
    for gate in gates:  # broadcast over every position: size 1 along both spatial dims
        offset = call.output.dim() - gate.dim()
        if any(d < offset or gate.shape[d - offset] != 1 for d in out_dims):
            return None
    product = _elementwise(dataclasses.replace(call, inputs=maps))
    return dataclasses.replace(product, context=True) if isinstance(product, _Local) else product


def _is_one_by_one(tensor: torch.Tensor) -> bool:
    return tensor.dim() >= 3 and tuple(tensor.shape[-2:]) == (1, 1)


def _handler(func: torch._ops.OpOverload) -> _Handler:
    import torch

    if torch.Tag.pointwise in func.tags:
        return _elementwise
    packet = func.overloadpacket
    handlers = _handler_table()
    if packet in handlers:
        return handlers[packet]
    return _elementwise if _has_pointwise_overload(packet) else _unknown


@functools.cache
def _has_pointwise_overload(packet: torch._ops.OpOverloadPacket) -> bool:
    # The pointwise tag is often missing on out= and scalar overloads of elementwise ops (relu.out, ...).
    import torch

    return any(torch.Tag.pointwise in getattr(packet, name).tags for name in packet.overloads())


def _pair(value: int | Sequence[int], default: Sequence[int] | None = None) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) == 0 and default is not None:
        return _pair(default)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _window(rf: _Local, kernel: Any, stride: Any, padding: Any, dilation: Any) -> _Local:
    k, s, p, d = _pair(kernel), _pair(stride, default=kernel), _pair(padding), _pair(dilation)
    return rf.with_axes(rf.y.window(k[0], s[0], p[0], d[0]), rf.x.window(k[1], s[1], p[1], d[1]))


def _channels_first(call: _Call, name: str = "self") -> _Local | _Global:
    """The main argument's annotation when its spatial dims are the last two (what convolutions, pooling
    and padding read as height and width); global with a warning otherwise."""
    rf, tensor = call.main(name), call.params[name]
    if isinstance(rf, _Local) and (rf.merged or rf.dims != (tensor.dim() - 2, tensor.dim() - 1)):
        return _Global(f"{call.func} reads a tensor whose spatial dims are not the last two")
    return rf


def _is_feature_map(tensor: torch.Tensor) -> bool:
    return tensor.dim() >= 3 and tuple(tensor.shape[-2:]) != (1, 1)


def _unknown(call: _Call) -> _Annotation:
    # Reductions to (B, C) or 1x1 genuinely see everything; anything else spatial is a guess worth a warning.
    if not _is_feature_map(call.output) and not any(a.merged for _, a in call.inputs):
        return _Global()
    return _Global(f"{call.func} is not understood by the receptive-field tracer")


def _no_dependency(call: _Call) -> None:
    return None  # zeros_like & co. only read the input's shape


def _elementwise(call: _Call) -> _Annotation:
    layouts = set()
    for tensor, rf in call.inputs:  # dims counted from the end: broadcasting prepends dims
        dims = tuple(d - tensor.dim() for d in rf.dims)
        sizes = tuple(tensor.shape[d] for d in dims)
        if any(d + call.output.dim() < 0 for d in dims) or sizes != tuple(call.output.shape[d] for d in dims):
            # Broadcasting one position over the map makes every output position see it.
            return _Global(f"{call.func} broadcasts a feature map over another spatial size")
        layouts.add((dims, rf.merged))
    if len(layouts) > 1:
        return _Global(f"{call.func} combines tensors with different layouts {sorted(layouts, key=str)}")
    rf = _union([a for _, a in call.inputs])
    dims = tuple(d + call.output.dim() for d in next(iter(layouts))[0])
    return dataclasses.replace(rf, dims=dims) if isinstance(rf, _Local) else rf


def _batch_norm(call: _Call) -> _Annotation:
    if call.params.get("training"):
        return _Global(f"{call.func} normalises with batch statistics over all positions")
    return call.main("input")


def _convolution(call: _Call) -> _Annotation:
    if call.params["transposed"]:
        return _Unsupported("transposed convolutions are not supported")
    rf, weight = _channels_first(call, "input"), call.params["weight"]
    if not isinstance(rf, _Local):
        return rf
    if weight.dim() != 4:
        return _Global(f"{call.func} with a {weight.dim() - 2}-d kernel is not a 2-d convolution")
    p = call.params
    return _window(rf, tuple(weight.shape[-2:]), p["stride"], p["padding"], p["dilation"])


def _constant_pad(call: _Call) -> _Annotation:
    rf, pad = _channels_first(call), list(call.params["pad"])
    if not isinstance(rf, _Local):
        return rf
    # pad is (left, right, top, bottom, ...); only the leading side moves position 0.
    x = rf.x.shift(-pad[0])
    y = rf.y.shift(-pad[2]) if len(pad) >= 4 else rf.y
    return rf.with_axes(y, x)


def _max_pool(call: _Call) -> _Annotation:
    rf, p = _channels_first(call), call.params
    if not isinstance(rf, _Local):
        return rf
    return _window(rf, p["kernel_size"], p["stride"], p["padding"], p["dilation"])


def _avg_pool(call: _Call) -> _Annotation:
    rf, p = _channels_first(call), call.params
    if not isinstance(rf, _Local):
        return rf
    return _window(rf, p["kernel_size"], p["stride"], p["padding"], 1)


def _adaptive_pool(call: _Call) -> _Annotation:
    rf = _channels_first(call)
    if not isinstance(rf, _Local):
        return rf
    sizes_in, sizes_out = tuple(call.params["self"].shape[-2:]), _pair(call.params["output_size"])
    if sizes_out == (1, 1):
        return _Global(gate=True)
    if any(n % m for n, m in zip(sizes_in, sizes_out, strict=True)):
        return _Global(f"{call.func} from {sizes_in} to {sizes_out} has uneven bins")
    kernel = tuple(n // m for n, m in zip(sizes_in, sizes_out, strict=True))
    return _window(rf, kernel, kernel, 0, 1)


def _cat(call: _Call) -> _Annotation:
    tensors = [t for t in call.params["tensors"] if t.dim() > 1]  # legacy empty tensors are skipped by cat
    if not tensors:
        return _unknown(call)
    if call.spatial_axis(call.params["dim"] % tensors[0].dim(), "tensors") is not None:
        return _Global(f"{call.func} concatenates along a spatial dim")
    return _elementwise(call)


def _reshape(call: _Call) -> _Annotation:
    # A row-major reshape moves a dim of size n and inner size m (the product of the sizes after it) to a
    # dim of the same n and m, if there is one: its index is the same coordinate of every element.
    rf, shape_in, shape_out = call.main(), tuple(call.params["self"].shape), tuple(call.output.shape)
    if not isinstance(rf, _Local):
        return rf
    if rf.merged:
        return _unfolded(call, rf, shape_in, shape_out)
    y, x = rf.dims
    found_x = _same_dims(shape_in, shape_out, x)
    found_y = [d for d in _same_dims(shape_in, shape_out, y) if found_x and d < found_x[-1]]
    if found_y:
        return dataclasses.replace(rf, dims=(found_y[-1], found_x[-1]))
    # (B, H, W, C) -> (B*H*W, C): positions folded with the batch into the rows of a matmul (a Linear)
    if x == y + 1 and len(shape_out) == 2 and shape_out[1] == _prod(shape_in[x + 1 :]):
        return dataclasses.replace(rf, dims=(0, 0), merged=(shape_in[y], shape_in[x]))
    return _unknown(call)


def _unfolded(call: _Call, rf: _Local, shape_in: tuple, shape_out: tuple) -> _Annotation:
    # Matmul rows back to (B, H, W, C): columns innermost in the folded dim, rows just outside them.
    (d, _), (height, width) = rf.dims, rf.merged
    inner = _prod(shape_in[d + 1 :])
    for x in range(1, len(shape_out)):
        if shape_out[x - 1 : x + 1] == (height, width) and _prod(shape_out[x + 1 :]) == inner:
            return dataclasses.replace(rf, dims=(x - 1, x), merged=None)
    if d < len(shape_out) and shape_out[d] == shape_in[d] and _prod(shape_out[d + 1 :]) == inner:
        return dataclasses.replace(rf, dims=(d, d))  # still folded (e.g. a view of the same shape)
    return _unknown(call)


def _same_dims(shape_in: tuple, shape_out: tuple, dim: int) -> list[int]:
    size, inner = shape_in[dim], _prod(shape_in[dim + 1 :])
    return [d for d, n in enumerate(shape_out) if n == size and _prod(shape_out[d + 1 :]) == inner]


def _prod(sizes: Sequence[int]) -> int:
    return functools.reduce(lambda a, b: a * b, sizes, 1)


def _expand(call: _Call) -> _Annotation:
    rf, source = call.main(), call.params["self"]
    if not isinstance(rf, _Local):
        return rf
    offset = call.output.dim() - source.dim()
    if any(call.output.shape[d + offset] != source.shape[d] for d in rf.dims):
        return _Global(f"{call.func} broadcasts a feature map over another spatial size")
    return dataclasses.replace(rf, dims=(rf.dims[0] + offset, rf.dims[1] + offset))


def _moved(call: _Call, order: Sequence[int]) -> _Annotation:
    # The output's dim i is the input's dim order[i].
    rf = call.main()
    if not isinstance(rf, _Local):
        return rf
    y, x = (order.index(d) for d in rf.dims)
    if rf.merged:
        return dataclasses.replace(rf, dims=(y, x))
    if y > x:  # positions would be read back as (x, y): not a layout change
        return _Global(f"{call.func} swaps the image's rows and columns")
    return dataclasses.replace(rf, dims=(y, x))


def _permute(call: _Call) -> _Annotation:
    ndim = call.params["self"].dim()
    return _moved(call, [d % ndim for d in call.params["dims"]])


def _transpose(call: _Call) -> _Annotation:
    ndim = call.params["self"].dim()
    order = list(range(ndim))
    a, b = call.params["dim0"] % ndim, call.params["dim1"] % ndim
    order[a], order[b] = order[b], order[a]
    return _moved(call, order)


def _along_dim(call: _Call) -> _Annotation:
    import torch

    # split / unbind / select along channels or batch leave positions untouched.
    rf, dim = call.main(), call.params["dim"] % call.params["self"].dim()
    if not isinstance(rf, _Local) or call.spatial_axis(dim) is not None:  # matmul rows: dim 0 is spatial
        return _unknown(call)
    aten = torch.ops.aten
    if call.func.overloadpacket in (aten.select, aten.unbind):  # the dim is dropped
        return _without_dims(rf, [dim])
    return rf


def _without_dims(rf: _Local, removed: Sequence[int]) -> _Local:
    y, x = (d - sum(r < d for r in removed) for d in rf.dims)
    return dataclasses.replace(rf, dims=(y, x))


def _slice(call: _Call) -> _Annotation:
    rf, source, p = call.main(), call.params["self"], call.params
    if not isinstance(rf, _Local):
        return rf
    axis = call.spatial_axis(p["dim"])
    if axis is None or rf.merged:
        return rf if axis is None else _unknown(call)
    size = source.shape[p["dim"]]
    start = 0 if p["start"] is None else p["start"]
    start = _clip(start + size if start < 0 else start, size)
    if axis == 0:
        return rf.with_axes(rf.y.shift(start, p["step"]), rf.x)
    return rf.with_axes(rf.y, rf.x.shift(start, p["step"]))


def _reduction(call: _Call) -> _Annotation:
    rf, source, dims = call.main(), call.params["self"], call.params.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if not dims or not all(isinstance(d, int) for d in dims) or not isinstance(rf, _Local):
        return _Global()
    dims = [d % source.dim() for d in dims]
    if any(call.spatial_axis(d) is not None for d in dims):
        # A reduction over positions really does depend on all of them; kept as (B, C, 1, 1) it may gate.
        keepdim = call.params.get("keepdim") and not rf.merged and set(rf.dims) <= set(dims)
        return _Global(gate=bool(keepdim))
    return rf if call.params.get("keepdim") else _without_dims(rf, dims)


def _layer_norm(call: _Call) -> _Annotation:
    # Normalised over the trailing dims: channels-last LayerNorm leaves every position on its own.
    rf, ndim = call.main("input"), call.params["input"].dim()
    normalised = range(ndim - len(call.params["normalized_shape"]), ndim)
    if isinstance(rf, _Local) and any(d in normalised for d in rf.dims):
        return _Global()  # statistics over positions depend on all of them
    return rf


def _matmul_rows(call: _Call) -> _Annotation:
    # A Linear on channels-last maps: (positions, C) @ (C, C') keeps every row a position.
    rf = call.main("mat1" if "mat1" in call.params else "self")
    if isinstance(rf, _Local) and rf.merged and rf.dims == (0, 0):
        return rf
    return _unknown(call)


def _packets(*names: str) -> list[Any]:
    import torch

    aten = torch.ops.aten
    return [getattr(aten, name) for name in names if hasattr(aten, name)]


@functools.cache
def _handler_table() -> dict[Any, _Handler]:
    groups: list[tuple[list[Any], _Handler]] = [
        (_packets("convolution"), _convolution),
        (_packets("constant_pad_nd"), _constant_pad),
        (_packets("max_pool2d", "max_pool2d_with_indices"), _max_pool),
        (_packets("avg_pool2d"), _avg_pool),
        (_packets("_adaptive_avg_pool2d", "adaptive_max_pool2d"), _adaptive_pool),
        (_packets("cat"), _cat),
        (
            _packets(
                "native_batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm", "miopen_batch_norm"
            ),
            _batch_norm,
        ),
        (
            _packets(
                "_native_batch_norm_legit_no_training",
                "native_dropout",
                "dropout",
                "_to_copy",
                "copy_",
                "copy",
                "clone",
                "detach",
                "alias",
                "lift_fresh",
                "lift_fresh_copy",
                "contiguous",
                # activations and fills whose overloads lack the pointwise tag
                "hardswish",
                "hardswish_",
                "gelu_",
                "mish_",
                "threshold_",
                "_prelu_kernel",
                "prelu",
                "log_sigmoid_forward",
                "rrelu_with_noise",
                "rrelu_with_noise_",
                "where",
                "masked_fill",
                "masked_fill_",
                "fill_",
                "zero_",
                "bernoulli_",
            ),
            _elementwise,
        ),
        (_packets("view", "_unsafe_view", "reshape", "_reshape_alias", "unsqueeze", "squeeze"), _reshape),
        (_packets("expand"), _expand),
        (_packets("native_layer_norm"), _layer_norm),
        (_packets("mm", "addmm"), _matmul_rows),
        (_packets("permute"), _permute),
        (_packets("transpose"), _transpose),
        (_packets("select", "split", "split_with_sizes", "unbind", "narrow", "glu"), _along_dim),
        (_packets("slice"), _slice),
        (
            _packets(
                "mean",
                "sum",
                "amax",
                "amin",
                "max",
                "min",
                "var",
                "std",
                "var_mean",
                "logsumexp",
                "softmax",
                "_softmax",
                "log_softmax",
                "_log_softmax",
                "argmax",
                "argmin",
            ),
            _reduction,
        ),
        (
            _packets(
                "empty_like",
                "zeros_like",
                "ones_like",
                "full_like",
                "rand_like",
                "randn_like",
                "new_empty",
                "new_zeros",
                "new_ones",
                "new_full",
                "new_empty_strided",
            ),
            _no_dependency,
        ),
    ]
    return {packet: handler for packets, handler in groups for packet in packets}
