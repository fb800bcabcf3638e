"""Receptive fields checked against an independent gradient probe and against published values.

The probe makes a copy of the model linear with strictly positive weights (activations -> Identity,
max pooling -> average pooling, batch norm -> identity, weights -> positive averages), feeds an all-ones
float64 image, and backpropagates one feature position: the pixels with a nonzero gradient are exactly
the pixels that position can see, so their bounding box must equal the clipped receptive-field box
(SUPERSET_ONLY lists the positions where the box is provably looser).
"""

from __future__ import annotations

import copy
import doctest
import functools
import inspect
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from actindex.pipeline import receptive_field
from actindex.pipeline.geometry import ReceptiveField, boxes
from actindex.pipeline.receptive_field import compute_receptive_fields

EFFICIENTNET_BLOCKS = [f"blocks.{i}" for i in range(7)]


class DilatedPadConcat(nn.Module):
    """Dilation, asymmetric F.pad, concatenated branches with different kernels, ceil-mode pooling, a crop."""

    def __init__(self, pad_bottom: int = 2) -> None:
        super().__init__()
        self.pad_bottom = pad_bottom
        self.dilated = nn.Conv2d(3, 4, 3, dilation=2, padding=2)
        self.narrow = nn.Conv2d(4, 4, 3, stride=2)
        self.wide = nn.Conv2d(4, 4, 5, stride=2, padding=1)
        self.merge = nn.Conv2d(8, 4, 1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.crop = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.dilated(x))
        x = F.pad(x, (2, 0, 1, self.pad_bottom))  # left, right, top, bottom
        x = self.merge(torch.cat([self.narrow(x), self.wide(x)], dim=1))
        return self.crop(F.pad(self.pool(x), (-1, 0, 0, -1)))  # negative pads crop


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.Conv2d(4, 4, 1)
        self.scaled = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.scaled(x * torch.sigmoid(self.gate(x.mean(dim=(2, 3), keepdim=True))))


class TupleOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class Upsampling(nn.Module):
    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2) if transposed else nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "alexnet": lambda: torchvision.models.alexnet(weights=None),
    "vgg16": lambda: torchvision.models.vgg16(weights=None),
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    # multi-branch nets; transform_input as with the pretrained weights (an affine per-channel input map)
    "densenet121": lambda: torchvision.models.densenet121(weights=None),
    "googlenet": lambda: torchvision.models.googlenet(weights=None, init_weights=False, transform_input=True),
    "inception_v3": lambda: torchvision.models.inception_v3(
        weights=None, init_weights=False, aux_logits=False, transform_input=True
    ),
    "resnet50d": lambda: timm.create_model("resnet50d", pretrained=False),
    "tf_efficientnet_lite0": lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False),
    "dilated_pad_concat": DilatedPadConcat,
    # squeeze-excitation gates (torchvision SqueezeExcitation)
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(weights=None),
    "mobilenet_v3_large": lambda: torchvision.models.mobilenet_v3_large(weights=None),
    "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(weights=None),
    "timm_mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050", pretrained=False),
    # channels-last LayerNorm and Linear between permutes; timm's atto with 1x1 convs, then with Linear layers
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(weights=None),
    "convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False),
    "convnext_atto_linear": lambda: timm.create_model("convnext_atto", pretrained=False, conv_mlp=False),
}


@functools.cache
def get_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def strict_receptive_fields(model: nn.Module, layers: Sequence[str], size: tuple[int, int]) -> dict:
    # Every op of the tested models must be understood: a fallback warning here is a bug.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compute_receptive_fields(model, layers, size)


# --- gradient probe -------------------------------------------------------------------------------

ACTIVATIONS = tuple(
    cls
    for cls in vars(nn.modules.activation).values()
    if isinstance(cls, type)
    and issubclass(cls, nn.Module)
    and cls.__module__ == nn.modules.activation.__name__
)


def linearised(model: nn.Module, detach_gates: bool = True) -> nn.Module:
    """Copy in which every feature position's gradient support is its exact dependency set; with
    `detach_gates`, squeeze-excitation gates are constants (the tracer's gates="constant")."""
    probe = copy.deepcopy(model).eval().double().requires_grad_(False)
    for parent in list(probe.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ACTIVATIONS):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, as_avg_pool(child))
            elif isinstance(child, nn.LayerNorm):  # normalises over channels only (LayerNorm2d included)
                setattr(parent, name, ChannelsFirstIdentity(child))
        if isinstance(parent, torchvision.ops.SqueezeExcitation):  # forward: `self._scale(input) * input`
            parent._scale = functools.partial(bounded_gate, parent._scale, detach_gates)
        elif isinstance(parent, timm.models._efficientnet_blocks.SqueezeExcite):  # `x * self.gate(x_se)`
            parent.gate = BoundedGate(parent.gate, detach_gates)
    for module in probe.modules():
        # Lazily, on each call (repeats keep weights positive): the probe stops after the last probed layer,
        # and making VGG's unused 120M-weight head positive would cost seconds.
        module.register_forward_pre_hook(lambda module, args: make_positive(module))
    return probe


def bounded_gate(scale: Callable, detach: bool, x: torch.Tensor) -> torch.Tensor:
    # Linearised, a gate grows like its input and their product squares: divided by its (constant) maximum
    # it stays in (0, 1] and float64 does not overflow after a dozen gates.
    gate = scale(x)
    gate = gate / gate.detach().amax()
    return gate.detach() if detach else gate


class BoundedGate(nn.Module):
    def __init__(self, gate: nn.Module, detach: bool) -> None:
        super().__init__()
        self.gate, self.detach = gate, detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bounded_gate(self.gate, self.detach, x)


class ChannelsFirstIdentity(nn.Module):
    """Identity standing in for a LayerNorm: the dependency set of each position is unchanged."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def as_avg_pool(pool: nn.MaxPool2d) -> nn.AvgPool2d:
    assert pool.dilation in (1, (1, 1)), "AvgPool2d has no dilation"
    return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)


class MaxPoolAsAvgPool(TorchFunctionMode):
    """Functional max pools (inception_v3's Mixed_6a/7a) pass a gradient to one pixel: average instead."""

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if func is F.max_pool2d:
            params = inspect.signature(F._max_pool2d).bind(*args, **kwargs).arguments
            assert params.get("dilation", 1) in (1, (1, 1)) and not params.get("return_indices")
            kept = {k: v for k, v in params.items() if k in ("kernel_size", "stride", "padding", "ceil_mode")}
            return F.avg_pool2d(params["input"], **kept)
        return func(*args, **kwargs)


def make_positive(module: nn.Module) -> None:
    # Positive weights on a positive image keep every value positive: functional ReLUs pass gradients,
    # and no gradient cancels to zero. Normalising to averages keeps float64 far from overflow.
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        weight = module.weight.abs() + 0.01
        module.weight.copy_(weight / weight.sum(dim=tuple(range(1, weight.dim())), keepdim=True))
        if module.bias is not None:
            module.bias.zero_()


class _Captured(Exception):
    pass


def probe_outputs(probe: nn.Module, layers: Sequence[str], image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of `layers`, stopping the forward pass once all are seen (the head is not needed)."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(probe.named_modules())

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            outputs[name] = output
            if len(outputs) == len(layers):
                raise _Captured

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        with MaxPoolAsAvgPool():
            probe(image)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def support_box(grad: torch.Tensor) -> tuple[int, int, int, int]:
    seen = grad[0].abs().sum(dim=0) > 0
    rows, cols = seen.any(dim=1).nonzero()[:, 0], seen.any(dim=0).nonzero()[:, 0]
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def probe_positions(output: torch.Tensor) -> list[tuple[int, int]]:
    if output.dim() == 2:
        return [(0, 0)]
    h, w = output.shape[-2:]
    candidates = [(0, 0), (h - 1, w - 1), (h // 2, w // 2), (min(1, h - 1), max(w - 3, 0))]
    return list(dict.fromkeys(candidates))  # corners check offsets, centre the size, the last asymmetry


def probed_boxes(
    model: nn.Module, layers: Sequence[str], size: tuple[int, int], detach_gates: bool = True
) -> dict[tuple, tuple]:
    image = torch.ones(1, 3, *size, dtype=torch.float64, requires_grad=True)
    outputs = probe_outputs(linearised(model, detach_gates), layers, image)
    found = {}
    for layer in layers:
        for y, x in probe_positions(outputs[layer]):
            target = outputs[layer][0] if outputs[layer].dim() == 2 else outputs[layer][0, :, y, x]
            (grad,) = torch.autograd.grad(target.sum(), image, retain_graph=True)
            found[layer, y, x] = support_box(grad)
    return found


# --- tests against the probe ----------------------------------------------------------------------

PROBE_CASES = [
    # model, input (H, W), layers, layers with a probed position whose box is unclipped (full-size check)
    ("alexnet", (256, 256), ["features.2", "features.5", "features.12"], ["features.12"]),
    ("vgg16", (224, 224), ["features.4", "features.16", "features.30"], ["features.30"]),
    ("resnet18", (224, 224), ["relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc"], ["layer3"]),
    ("resnet50", (224, 224), ["layer1", "layer3"], ["layer1"]),
    ("resnet50", (448, 448), ["layer2", "layer4"], ["layer4"]),  # 448 px: layer4's 427 px fit in
    (
        "densenet121",
        (64, 64),
        ["features.pool0", "features.transition2", "features.norm5"],
        ["features.pool0"],
    ),
    (
        "densenet121",
        (96, 80),
        ["features.pool0", "features.transition1", "features.denseblock4"],
        ["features.pool0"],
    ),
    ("googlenet", (64, 64), ["maxpool1", "inception3a", "inception4e", "inception5b"], ["inception3a"]),
    ("googlenet", (96, 80), ["conv1", "inception4a", "inception5b"], ["conv1"]),
    # sizes at which every valid stride-2 stage reads the last row and column: at e.g. 76 or 79 the stem
    # drops some, which edge boxes still cover (see test_pixels_a_stride_drops_stay_in_edge_boxes)
    ("inception_v3", (75, 75), ["Conv2d_2b_3x3", "Mixed_5b", "Mixed_6a", "Mixed_7c"], ["Mixed_5b"]),
    ("inception_v3", (107, 91), ["Conv2d_4a_3x3", "Mixed_6b", "Mixed_7a", "Mixed_7c"], ["Conv2d_4a_3x3"]),
    ("resnet50d", (64, 64), ["conv1", "layer1", "layer2", "layer4"], ["layer1"]),
    ("resnet50d", (96, 80), ["maxpool", "layer3", "layer4"], ["maxpool"]),
    ("tf_efficientnet_lite0", (224, 224), ["conv_stem", *EFFICIENTNET_BLOCKS, "classifier"], ["blocks.3"]),
    ("tf_efficientnet_lite0", (231, 231), ["conv_stem", *EFFICIENTNET_BLOCKS, "classifier"], ["blocks.3"]),
    ("dilated_pad_concat", (29, 35), ["dilated", "narrow", "wide", "merge", "pool", "crop"], ["merge"]),
    # squeeze-excitation nets: gates are constants (probe: gates detached)
    ("efficientnet_b0", (64, 64), ["features.2", "features.4", "features.8"], ["features.2"]),
    ("efficientnet_b0", (96, 77), ["features.1", "features.3", "features.8"], ["features.1"]),
    ("mobilenet_v3_large", (64, 64), ["features.2", "features.7", "features.16"], ["features.2"]),
    ("mobilenet_v3_large", (96, 77), ["features.4", "features.12", "features.16"], ["features.4"]),
    ("regnet_y_400mf", (64, 64), ["stem", "trunk_output.block1", "trunk_output.block4"], ["stem"]),
    (
        "regnet_y_400mf",
        (96, 77),
        ["trunk_output.block1", "trunk_output.block2", "trunk_output.block4"],
        ["trunk_output.block1"],
    ),
    ("timm_mobilenetv3_small_050", (64, 64), ["blocks.0", "blocks.2", "blocks.5"], ["blocks.0"]),
    ("timm_mobilenetv3_small_050", (96, 77), ["blocks.1", "blocks.3", "blocks.5"], ["blocks.1"]),
    # ConvNeXt: NHWC permutes, channels-last LayerNorm, Linear on NHWC maps
    ("convnext_tiny", (64, 64), ["features.0", "features.1", "features.3", "features.7"], ["features.0"]),
    ("convnext_tiny", (96, 128), ["features.1.0.block", "features.2", "features.7"], ["features.2"]),
    ("convnext_atto", (64, 64), ["stem", "stages.0", "stages.1", "stages.3"], ["stem"]),
    ("convnext_atto", (96, 128), ["stages.0.blocks.1", "stages.1", "stages.3"], ["stages.0.blocks.1"]),
    ("convnext_atto_linear", (64, 64), ["stages.0.blocks.1", "stages.1", "stages.3"], ["stages.0.blocks.1"]),
    ("convnext_atto_linear", (96, 128), ["stem", "stages.0.blocks.0", "stages.2", "stages.3"], ["stem"]),
]


# Exceptions to exactness, (layer, y, x) per model: the dilated 3x3 kernel of position y=1 reads rows
# -1, 1 and 3, so image row 0 falls in a dilation hole although the clipped box starts there.
SUPERSET_ONLY = {"dilated_pad_concat": [("dilated", 1, 32)]}


def contains(outer: tuple, inner: tuple) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_name, size, layers, unclipped",
    PROBE_CASES,
    ids=[f"{c[0]}-{c[1][0]}x{c[1][1]}" for c in PROBE_CASES],
)
def test_boxes_match_gradient_probe(
    model_name: str, size: tuple[int, int], layers: list, unclipped: list
) -> None:
    model = get_model(model_name)
    rfs = strict_receptive_fields(model, layers, size)
    probed = probed_boxes(model, layers, size)
    expected = {(layer, y, x): rfs[layer].clipped_box(y, x, *size) for layer, y, x in probed}
    for key in SUPERSET_ONLY.get(model_name, []):
        assert contains(expected.pop(key), probed.pop(key))
    assert probed == expected
    for layer in unclipped:  # some position must see its whole field, so the size itself is probed
        assert any(rfs[layer].box(y, x) == box for (name, y, x), box in probed.items() if name == layer)


GATED_CASES = [
    # model, input (H, W), layers (the first after a gate, the deepest spatial one), a layer before any gate
    ("efficientnet_b0", (64, 64), ["features.1", "features.8"], "features.0"),
    ("mobilenet_v3_large", (64, 64), ["features.4", "features.16"], "features.3"),
    ("regnet_y_400mf", (64, 64), ["trunk_output.block1", "trunk_output.block4"], "stem"),
    ("timm_mobilenetv3_small_050", (64, 64), ["blocks.0", "blocks.5"], "conv_stem"),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_name, size, layers, before", GATED_CASES, ids=[c[0] for c in GATED_CASES])
def test_strict_gates_match_gradient_probe(model_name: str, size: tuple, layers: list, before: str) -> None:
    # Through live gates every position depends on every pixel: strict boxes are the whole image.
    model = get_model(model_name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strict = compute_receptive_fields(model, [before, *layers], size, gates="strict")
    constant = strict_receptive_fields(model, [before, *layers], size)
    probed = probed_boxes(model, layers, size, detach_gates=False)
    assert probed == {(layer, y, x): strict[layer].clipped_box(y, x, *size) for layer, y, x in probed}
    assert all(strict[layer].is_global and not strict[layer].global_context for layer in layers)
    assert all(constant[layer].global_context and not constant[layer].is_global for layer in layers)
    assert strict[before] == constant[before] and not constant[before].global_context


# --- analytic values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name, layer, size, jump",
    [
        ("resnet50", "layer4", 427, 32),
        ("resnet18", "layer4", 435, 32),
        ("alexnet", "features.12", 195, 32),
        ("vgg16", "features.30", 212, 32),
        ("resnet18", "layer1", 43, 4),
        ("vgg16", "features.16", 44, 8),
    ],
)
def test_published_sizes(model_name: str, layer: str, size: int, jump: int) -> None:
    rf = strict_receptive_fields(get_model(model_name), [layer], (224, 224))[layer]
    assert (rf.size_y, rf.size_x, rf.jump_y, rf.jump_x, rf.is_global) == (size, size, jump, jump, False)
    assert rf.start_y == rf.start_x


def test_efficientnet_same_padding_depends_on_input_size() -> None:
    # TF "same" pads stride-2 convs (0, 1) for even inputs and (1, 1) for odd ones: only the start moves.
    layers = ["conv_stem", "blocks.6"]
    even = strict_receptive_fields(get_model("tf_efficientnet_lite0"), layers, (224, 224))
    odd = strict_receptive_fields(get_model("tf_efficientnet_lite0"), layers, (231, 231))
    assert (even["conv_stem"].start_y, odd["conv_stem"].start_y) == (0, -1)
    assert (even["blocks.6"].size_y, even["blocks.6"].jump_y) == (
        odd["blocks.6"].size_y,
        odd["blocks.6"].jump_y,
    )
    assert even["blocks.6"].start_y > odd["blocks.6"].start_y


def test_hand_computed_tiny_model() -> None:
    rfs = strict_receptive_fields(get_model("dilated_pad_concat"), ["dilated", "merge", "crop"], (29, 35))
    assert rfs["dilated"] == ReceptiveField(5, 5, 1, 1, -2, -2, False)
    # Padding top 1 / left 2 moves the narrow branch (k3, p0) to start (-3, -4); the wide branch (k5, p1)
    # reaches one pixel further on both sides and so bounds the concatenation.
    assert rfs["merge"] == ReceptiveField(9, 9, 2, 2, -4, -5, False)
    # ceil-mode pool k3 s2 p1 (one step of 2 px of padding), then a crop of one column on the left
    assert rfs["crop"] == ReceptiveField(13, 13, 4, 4, -6, -3, False)


def test_positions_reading_only_padding_keep_the_extrapolated_box() -> None:
    # A 3-px bottom pad gives the k3/s2 branch a last row that reads padding only: it depends on no pixel,
    # yet (jump, start, end) extrapolates a box that overlaps the image. The box stays a superset.
    model, size = DilatedPadConcat(pad_bottom=3).eval(), (29, 35)
    rf = strict_receptive_fields(model, ["narrow"], size)["narrow"]
    image = torch.ones(1, 3, *size, dtype=torch.float64, requires_grad=True)
    out = probe_outputs(linearised(model), ["narrow"], image)["narrow"]
    last = out.shape[-2] - 1
    (grad,) = torch.autograd.grad(out[0, :, last, 0].sum(), image)
    assert not grad.any() and rf.clipped_box(last, 0, *size) == (0, 27, 3, 29)


class AsymmetricBranches(nn.Module):
    """Inception-style block: 1x7 and 3x1 convolutions, a count_include_pad=False average pool, a concat."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 4, (1, 7), padding=(0, 3))
        self.tall = nn.Conv2d(3, 4, (3, 1), padding=(1, 0))
        self.pool = nn.AvgPool2d((3, 1), stride=1, padding=(1, 0), count_include_pad=False)
        self.low = nn.Conv2d(3, 4, (3, 1))  # unpadded, then padded at the bottom: reaches down only
        self.block = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.pad(self.low(x), (0, 0, 0, 2))
        return self.block(torch.cat([self.wide(x), self.tall(x), self.pool(x), low], dim=1))


def test_concatenated_branches_take_the_union_per_axis() -> None:
    model = AsymmetricBranches().eval()
    rfs = strict_receptive_fields(model, ["wide", "tall", "low", "block"], (11, 13))
    assert rfs["wide"] == ReceptiveField(1, 7, 1, 1, 0, -3, False)
    assert rfs["tall"] == ReceptiveField(3, 1, 1, 1, -1, 0, False)
    assert rfs["low"] == ReceptiveField(3, 1, 1, 1, 0, 0, False)
    # top from the 3x1 branch, bottom from the low one, width from the 1x7 one: not square
    assert rfs["block"] == ReceptiveField(4, 7, 1, 1, -1, -3, False)
    probed = probed_boxes(model, ["block"], (11, 13))
    assert probed == {key: rfs["block"].clipped_box(*key[1:], 11, 13) for key in probed}


def test_pixels_a_stride_drops_stay_in_edge_boxes() -> None:
    # A valid stride-2 3x3 conv on 8 rows reads rows 0-6 only; a padded 3x3 conv after it extrapolates the
    # last position's box over row 7, which nothing reads (inception_v3 on even sizes: Conv2d_1a_3x3). Boxes
    # are affine in the position, so this edge box stays a superset; size, jump and start are exact.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, padding=1)).eval()
    rf = strict_receptive_fields(model, ["1"], (8, 8))["1"]
    assert rf == ReceptiveField(7, 7, 2, 2, -2, -2, False)
    probed = probed_boxes(model, ["1"], (8, 8))
    assert probed["1", 1, 1] == rf.clipped_box(1, 1, 8, 8) == (0, 0, 7, 7)  # the centre: exact
    assert probed["1", 2, 2] == (2, 2, 7, 7) and rf.clipped_box(2, 2, 8, 8) == (2, 2, 8, 8)


@pytest.mark.parametrize(
    "activation",
    [
        nn.ReLU(inplace=True),
        nn.ReLU6(),
        nn.Hardtanh(inplace=True),
        nn.Hardswish(inplace=True),
        nn.Hardsigmoid(),
        nn.SiLU(inplace=True),
        nn.GELU(),
        nn.Mish(inplace=True),
        nn.PReLU(),
        nn.LeakyReLU(inplace=True),
        nn.ELU(),
        nn.Sigmoid(),
        nn.Tanh(),
        nn.Softplus(),
        nn.Threshold(0.1, 0.0, inplace=True),
        nn.Dropout2d(),
    ],
    ids=lambda module: repr(module),
)
def test_activations_keep_the_receptive_field(activation: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), activation)
    rfs = strict_receptive_fields(model, ["0", "1"], (17, 17))
    assert rfs["0"] == rfs["1"] == ReceptiveField(3, 3, 2, 2, -1, -1, False)


# --- API behaviour --------------------------------------------------------------------------------


def test_global_layers_cover_the_whole_image_at_every_position() -> None:
    rf = strict_receptive_fields(get_model("resnet18"), ["fc"], (200, 300))["fc"]
    assert rf == ReceptiveField(200, 300, 200, 300, 0, 0, True)
    assert rf.box(0, 0) == rf.box(5, 7) == rf.clipped_box(3, 3, 200, 300) == (0, 0, 300, 200)
    assert boxes(rf, np.array([0, 4]), np.array([0, 9])).tolist() == [[0, 0, 300, 200]] * 2


def test_vectorised_boxes_match_box() -> None:
    rf = ReceptiveField(size_y=7, size_x=5, jump_y=4, jump_x=2, start_y=-3, start_x=-1, is_global=False)
    y, x = np.array([0, 1, 5]), np.array([2, 0, 9])
    got = boxes(rf, y, x)
    assert got.dtype == np.int64 and got.shape == (3, 4)
    assert got.tolist() == [list(rf.box(int(a), int(b))) for a, b in zip(y, x, strict=True)]
    assert rf.box(0, 0) == (-1, -3, 4, 4) and rf.clipped_box(0, 0, 3, 3) == (0, 0, 3, 3)


def test_unknown_layer_lists_close_names() -> None:
    with pytest.raises(LookupError, match="layer4"):
        compute_receptive_fields(get_model("resnet18"), ["layer5"], (64, 64))


def test_restores_training_flags_and_removes_hooks() -> None:
    model = torchvision.models.resnet18(weights=None).train()
    model.layer1.eval()  # a deliberately frozen submodule must stay frozen
    compute_receptive_fields(model, ["layer1", "layer2"], (64, 64))
    assert model.training and model.layer2.training and not model.layer1.training
    assert not any(module._forward_hooks for module in model.modules())


def test_restores_training_flags_and_removes_hooks_when_the_trace_fails() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), TupleOutput()).train()
    with pytest.raises(TypeError, match="tuple"):
        compute_receptive_fields(model, ["0", "1"], (16, 16))
    assert all(module.training for module in model.modules())
    assert not any(module._forward_hooks for module in model.modules())


def test_squeeze_excitation_gate_is_a_constant_marked_as_global_context() -> None:
    rfs = strict_receptive_fields(SqueezeExcite(), ["conv", "gate", "scaled"], (16, 16))
    assert rfs["gate"].is_global and not rfs["conv"].global_context
    assert rfs["scaled"] == ReceptiveField(3, 3, 1, 1, -1, -1, False, global_context=True)


def test_strict_gates_make_positions_global_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rfs = compute_receptive_fields(SqueezeExcite(), ["conv", "gate", "scaled"], (16, 16), gates="strict")
    assert not rfs["conv"].is_global and rfs["gate"].is_global and rfs["scaled"].is_global


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(
    "output_size, expected",
    [
        ((12, 12), ReceptiveField(1, 1, 1, 1, 0, 0, False)),  # same size: identity
        ((6, 4), ReceptiveField(2, 3, 2, 3, 0, 0, False)),  # divisible: kernel = stride = in / out
        ((1, 3), ReceptiveField(12, 4, 12, 4, 0, 0, False)),  # one axis pooled completely
        ((1, 1), ReceptiveField(12, 12, 12, 12, 0, 0, True)),  # global pooling
    ],
)
def test_adaptive_pooling(pool: type, output_size: tuple, expected: ReceptiveField) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), pool(output_size))
    assert strict_receptive_fields(model, ["1"], (12, 12))["1"] == expected


def test_uneven_adaptive_pooling_is_global_with_warning() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(5))
    with pytest.warns(RuntimeWarning, match="uneven bins"):
        assert compute_receptive_fields(model, ["1"], (12, 12))["1"].is_global


def test_unrecognised_op_is_global_with_warning() -> None:
    model = Upsampling()
    with pytest.warns(RuntimeWarning, match="upsample"):
        rfs = compute_receptive_fields(model, ["conv", "up"], (16, 16))
    assert not rfs["conv"].is_global and rfs["up"].is_global


def test_transposed_convolution_raises_only_for_layers_after_it() -> None:
    model = Upsampling(transposed=True)
    assert compute_receptive_fields(model, ["conv"], (16, 16))["conv"].size_y == 3
    with pytest.raises(NotImplementedError, match="transposed"):
        compute_receptive_fields(model, ["up"], (16, 16))
    assert not any(module._forward_hooks for module in model.modules())


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(receptive_field, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


class ChannelsLast(nn.Module):
    """A ConvNeXt-style block tail: NHWC permute, LayerNorm, Linear, permute back; then `tail`."""

    def __init__(self, tail: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.norm, self.linear = nn.LayerNorm(4), nn.Linear(4, 6)
        self.mixed, self.tail = nn.Identity(), tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(self.norm(self.conv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2).contiguous()
        return self.mixed(self.tail(x))


def test_channels_last_layer_norm_and_linear_keep_positions() -> None:
    rfs = strict_receptive_fields(ChannelsLast(), ["conv", "mixed"], (17, 13))
    assert rfs["mixed"] == rfs["conv"] == ReceptiveField(3, 3, 2, 2, -1, -1, False)


@pytest.mark.parametrize(
    "tail, op",
    [(lambda x: x.transpose(2, 3), "transpose"), (lambda x: x.flatten(2).unsqueeze(-1), "view")],
    ids=["rows-and-columns-swapped", "positions-flattened"],
)
def test_layout_ops_that_mix_spatial_axes_are_global_with_warning(tail: Callable, op: str) -> None:
    with pytest.warns(RuntimeWarning, match=op):
        rfs = compute_receptive_fields(ChannelsLast(tail), ["conv", "mixed"], (16, 16))
    assert not rfs["conv"].is_global and rfs["mixed"].is_global


class LinearOnRows(nn.Module):
    """An explicit (B*H*W, C) Linear, split in two along channels, folded back to (B, C, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.linear, self.rows = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 8), nn.Identity()
        self.unfolded = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = self.rows(self.linear(self.conv(x).permute(0, 2, 3, 1).reshape(b * h * w, 4)))
        gated = rows[:, :4] * torch.sigmoid(rows[:, 4:])
        return self.unfolded(gated.view(b, h, w, 4).permute(0, 3, 1, 2))


def test_positions_folded_into_matmul_rows_are_followed_back() -> None:
    with pytest.warns(RuntimeWarning, match="rows of a matmul"):
        rfs = compute_receptive_fields(LinearOnRows(), ["rows", "unfolded"], (9, 11))
    assert rfs["rows"].is_global  # (B*H*W, C): no feature map to give boxes for
    assert rfs["unfolded"] == ReceptiveField(3, 3, 1, 1, -1, -1, False)
