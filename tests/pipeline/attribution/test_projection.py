"""Pixel projections: where they put the mass, that they follow the published rules, and how they batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from actindex.pipeline.attribution.projection import project
from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.errors import InvalidInputError, UnknownNameError
from tests.pipeline.attribution.conftest import RedNet, red_images, square_mask, top_rows

# float32: the same rule computed by another implementation differs only in the order of float32 sums (the
# convolutions' backward runs on another batch size and memory layout, which picks other oneDNN kernels):
# ~3e-7 of the map's largest value measured on AlexNet and ResNet-18. 1e-5 of the largest value leaves a
# 30x margin, while a rule that differs (rectified or not, masked or not) changes entries by O(1) of it.
RULE_ATOL = 1e-5


def test_guided_projection_of_a_red_detector_lies_on_the_red_square():
    model, images = RedNet().eval(), red_images()
    targets = top_rows(model, "relu3", images, units=[0])
    out = project(model, "relu3", images, targets, "guided")
    assert (out.values > 0).all()
    for row, image in enumerate(targets.image):
        mass = np.abs(out.maps[row]).sum(axis=0)
        inside = mass[square_mask(image)].sum() / mass.sum()
        assert inside >= 0.9, f"image {image}: {inside:.3f} of the mass on the square"


def zeiler_fergus(model: nn.Module, layer: str, image: torch.Tensor, row: tuple, method: str) -> torch.Tensor:
    """The rule written out: full backward hooks on every ReLU and ReLU6 of a copy (in place off), one image
    at a time. deconvnet: the signal below is relu(signal above); guided: relu(the module's own gradient)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = False
            if method == "deconvnet":
                module.register_full_backward_hook(lambda _m, _gin, gout: (gout[0].clamp(min=0),))
            else:
                module.register_full_backward_hook(lambda _m, gin, _gout: (gin[0].clamp(min=0),))
    x = image[None].clone().requires_grad_(True)
    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _i, o: out.setdefault("o", o)
    )
    model(x)
    handle.remove()
    unit, y, xx = row
    return torch.autograd.grad(out["o"][0, unit, y, xx], x)[0][0]


def captum_neuron(model: nn.Module, layer: str, image: torch.Tensor, row: tuple, method: str) -> torch.Tensor:
    attr = pytest.importorskip("captum.attr")
    kind = {"deconvnet": attr.NeuronDeconvolution, "guided": attr.NeuronGuidedBackprop}[method]
    module = dict(model.named_modules())[layer]
    with pytest.warns(UserWarning, match="Setting backward hooks"):
        return kind(model, module).attribute(image[None].clone().requires_grad_(True), row)[0]


def assert_same_maps(ours: np.ndarray, reference: torch.Tensor) -> None:
    atol = RULE_ATOL * float(reference.abs().max())
    torch.testing.assert_close(torch.as_tensor(ours), reference, rtol=0, atol=atol)


MODELS = {  # torchvision models with max pooling, random weights, small inputs
    "alexnet": (torchvision.models.alexnet, "features.11", 96),  # conv5's ReLU, 5x5
    "resnet18": (torchvision.models.resnet18, "layer3", 64),  # one ReLU module reused within each block
}


@pytest.fixture(scope="module", params=list(MODELS))
def rule_case(request):
    build, layer, side = MODELS[request.param]
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(3, 3, side, side)
    # 4 rows on 3 images, one image shared by two units: two slots in the first batch
    targets = top_rows(model, layer, images, units=[3, 17], k=2)
    return model, layer, images, targets


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
@pytest.mark.parametrize("oracle", [zeiler_fergus, captum_neuron])
def test_projections_follow_the_published_rule(rule_case, method, oracle):
    model, layer, images, targets = rule_case
    out = project(model, layer, images, targets, method, batch_size=2)
    assert out.backward_passes < len(targets)
    for row in range(len(targets)):
        where = (int(targets.unit[row]), int(targets.y[row]), int(targets.x[row]))
        reference = oracle(model, layer, images[targets.image[row]], where, method)
        assert reference.abs().max() > 0
        assert_same_maps(out.maps[row], reference)


def test_the_three_methods_differ_on_efficientnet_lite0():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()  # ReLU6 throughout
    images = torch.randn(2, 3, 96, 96)
    targets = top_rows(model, "blocks.3", images, units=[5], k=2)
    methods = ("deconvnet", "guided", "gradient")
    maps = {
        method: torch.as_tensor(project(model, "blocks.3", images, targets, method).maps)
        for method in methods
    }
    for a, b in [("deconvnet", "guided"), ("deconvnet", "gradient"), ("guided", "gradient")]:
        distance = (maps[a] - maps[b]).norm() / maps[b].norm()
        assert distance > 0.05, f"{a} and {b} maps are the same: {distance:.2e}"
    # and the ReLU6 rules are the published ones, written out
    where = (int(targets.unit[0]), int(targets.y[0]), int(targets.x[0]))
    for method in ("deconvnet", "guided"):
        assert_same_maps(
            maps[method][0], zeiler_fergus(model, "blocks.3", images[targets.image[0]], where, method)
        )


def test_backward_passes_one_per_unit_group():
    model, images = RedNet().eval(), red_images(squares=[(8 * i, 4 * i) for i in range(6)])
    # 3 units x 2 images each, all distinct: a pass of 4 images explains two units at once
    distinct = Targets(image=[0, 1, 2, 3, 4, 5], unit=[0, 0, 1, 1, 0, 0], y=[1] * 6, x=[2] * 6)
    out = project(model, "relu3", images, distinct, "guided", batch_size=4)
    assert (out.forward_passes, out.backward_passes) == (2, 2)
    # 3 units on the same 2 images: one forward, one backward pass per unit
    shared = Targets(image=[0, 1] * 3, unit=[0, 0, 1, 1, 0, 0], y=[1, 1, 1, 1, 2, 2], x=[2] * 6)
    out = project(model, "relu3", images, shared, "guided", batch_size=4)
    assert (out.forward_passes, out.backward_passes) == (1, 3)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batching_does_not_change_the_maps(batch_size):
    torch.manual_seed(1)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(4, 3, 64, 64)
    targets = Targets(
        image=[0, 1, 1, 2, 3, 3, 3], unit=[1, 1, 2, 3, 4, 5, 6], y=[0, 1, 2, 3, 0, 1, 2], x=[3] * 7
    )
    alone = [project(model, "layer2", images, Targets(*(v[[r]] for v in vars(targets).values())), "guided")
             for r in range(len(targets))]  # fmt: skip
    out = project(model, "layer2", images, targets, "guided", batch_size=batch_size)
    for row, single in enumerate(alone):
        assert_same_maps(out.maps[row], torch.as_tensor(single.maps[0]))
        assert out.values[row] == pytest.approx(single.values[0], rel=1e-5)


def test_refusals():
    model, images, one = RedNet().eval(), red_images(), Targets(image=[0], unit=[0], y=[0], x=[0])
    with pytest.raises(UnknownNameError, match="did you mean relu3"):
        project(model, "relu4", images, one)
    with pytest.raises(InvalidInputError, match="is not one of deconvnet, guided, gradient"):
        project(model, "relu3", images, one, "lrp")
    with pytest.raises(InvalidInputError, match="unit 2 >= 2 channels"):
        project(model, "relu3", images, Targets(image=[0], unit=[2], y=[0], x=[0]))
    with pytest.raises(InvalidInputError, match="call model.eval"):
        project(RedNet(), "relu3", images, one)


def test_a_layer_without_extent_is_explained_per_logit():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, 64, 64)
    targets = Targets(image=[0, 1], unit=[3, 7], y=[0, 0], x=[0, 0])
    out = project(model, "fc", images, targets, "gradient")
    x = images[1:].clone().requires_grad_(True)
    expected = torch.autograd.grad(model(x)[0, 7], x)[0][0]
    assert_same_maps(out.maps[1], expected)
    with pytest.raises(InvalidInputError, match="y 1 >= height 1"):
        project(model, "fc", images, Targets(image=[0], unit=[3], y=[1], x=[0]))
