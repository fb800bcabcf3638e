"""Layer selection by glob and layer shape description on torchvision's resnet18."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from actindex.pipeline.layers import (
    LayerInfo,
    container_notes,
    describe_all,
    describe_layers,
    module_names,
    output_shapes,
    pattern_regex,
    resolve_layers,
)
from actindex.pipeline.models import model_skeleton


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def test_single_star_stays_within_one_component(model: nn.Module) -> None:
    assert resolve_layers(model, ["layer*"]) == ["layer1", "layer2", "layer3", "layer4"]
    assert resolve_layers(model, ["layer1.*"]) == ["layer1.0", "layer1.1"]
    assert resolve_layers(model, ["layer?.1.conv?"]) == [
        f"layer{i}.1.conv{j}" for i in range(1, 5) for j in (1, 2)
    ]


def test_double_star_crosses_dots(model: nn.Module) -> None:
    names = resolve_layers(model, ["layer4.**"])
    assert "layer4.0.conv1" in names
    assert "layer4.0.downsample.0" in names
    assert "layer4" not in names  # '.**' needs the dot
    assert all(name.startswith("layer4.") for name in names)
    assert names == [n for n in module_names(model) if n.startswith("layer4.")]


def test_exact_names_and_module_order_without_duplicates(model: nn.Module) -> None:
    names = resolve_layers(model, ["fc", "layer2", "layer*", "layer1", "conv1", "layer1.0.*"])
    assert names == [
        "conv1",
        "layer1",
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer2",
        "layer3",
        "layer4",
        "fc",
    ]
    assert len(names) == len(set(names))


def test_pattern_is_anchored_and_literal(model: nn.Module) -> None:
    assert pattern_regex("layer1").match("layer1.0") is None
    assert pattern_regex("layer1").match("layer1") is not None
    assert pattern_regex("a.b").match("axb") is None  # '.' is literal
    assert resolve_layers(model, ["conv1"]) == ["conv1"]  # not layer1.0.conv1


def test_unknown_layer_suggests_close_names(model: nn.Module) -> None:
    with pytest.raises(LookupError) as info:
        resolve_layers(model, ["layer5"], model_name="resnet18")
    message = str(info.value)
    assert "'layer5'" in message
    assert "layer4" in message
    assert "actindex layers resnet18" in message


def test_unknown_pattern_among_good_ones_still_raises(model: nn.Module) -> None:
    with pytest.raises(LookupError, match="actindex layers"):
        resolve_layers(model, ["layer1", "features.**"])


def test_describe_layers_resnet18_at_224(model: nn.Module) -> None:
    infos = describe_layers(model, ["layer1", "layer4", "avgpool", "fc"], (224, 224))
    assert list(infos) == ["layer1", "layer4", "avgpool", "fc"]
    assert infos["layer4"] == LayerInfo("layer4", "Sequential", 512, 7, 7)
    assert infos["layer1"] == LayerInfo("layer1", "Sequential", 64, 56, 56)
    assert infos["avgpool"] == LayerInfo("avgpool", "AdaptiveAvgPool2d", 512, 1, 1)
    assert infos["fc"] == LayerInfo("fc", "Linear", 1000, 1, 1)


def test_describe_layers_non_square_input(model: nn.Module) -> None:
    infos = describe_layers(model, ["layer3"], (64, 128))
    assert (infos["layer3"].channels, infos["layer3"].height, infos["layer3"].width) == (256, 4, 8)


def test_describe_layers_removes_its_hooks(model: nn.Module) -> None:
    describe_layers(model, ["layer4", "fc"], (32, 32))
    assert all(not m._forward_hooks for m in model.modules())


def test_shared_module_reports_its_first_call(model: nn.Module) -> None:
    # resnet's block relu runs twice per forward, both times with the same shape at this block
    shapes = output_shapes(model, ["layer2.0.relu"], (64, 64))
    assert shapes == {"layer2.0.relu": (1, 128, 8, 8)}


def test_three_dimensional_output_raises_naming_the_shape() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2))
    with pytest.raises(ValueError) as info:
        describe_layers(model, ["1"], (8, 6))
    message = str(info.value)
    assert "(1, 4, 48)" in message
    assert "'1'" in message and "Flatten" in message


def test_layer_without_tensor_output_raises() -> None:
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    with pytest.raises(ValueError, match="no tensor output"):
        describe_layers(Net(), ["pair"], (4, 4))


def test_a_glob_that_matched_a_container_says_so_and_names_the_glob_of_its_children() -> None:
    skeleton = model_skeleton("efficientnet_lite0")  # timm's blocks: a Sequential of 7 stages
    (note,) = container_notes(
        skeleton, ["block*", "blocks.6", "conv_*"]
    )  # exact names and leaves say nothing
    assert note.startswith("--layers 'block*' matched blocks, a container of 7 modules")
    assert note.endswith("use --layers 'block*.*'")
    assert resolve_layers(skeleton, ["block*.*"]) == [f"blocks.{i}" for i in range(7)]


def test_describe_all_says_which_modules_it_skipped_and_why() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2), nn.Identity())
    rows, skipped = describe_all(model, "*", (8, 6))
    assert [info.name for info, _ in rows] == ["0"]
    assert skipped == [
        "skipped 2 modules that output (B, N, C) token sequences (e.g. (1, 4, 48)), not feature maps "
        "(B, C, H, W) or vectors (B, C): 1, 2"
    ]
