"""Channel contributions: the planted answer, the exact conv + ReLU term, a plain loop, and the pass count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from actindex.pipeline.attribution.contributions import contributions
from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.errors import InvalidInputError
from tests.pipeline.attribution.conftest import OneByOne, RedNet, layer_output, red_images, top_rows


def test_shares_of_a_planted_sum():
    # unit 0 = ReLU(2 a + 1 b) with a = b on every image: shares 2/3 and 1/3, every other channel 0
    model, images = OneByOne().eval(), red_images()
    targets = top_rows(model, "relu2", images, units=[0, 1])
    out = contributions(model, "relu2", "relu1", images, targets)
    assert out.units.tolist() == [0, 1] and out.images.tolist() == [3, 3]
    assert out.channels.shape == (2, 4)  # top=16, but layer1 has 4 channels
    assert out.channels[0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(out.shares[0, :2], [2 / 3, 1 / 3], rtol=1e-6)
    assert out.scores[0, 2:].tolist() == [0.0, 0.0] and out.shares[0, 2:].tolist() == [0.0, 0.0]
    assert out.scores[0].sum() == pytest.approx(out.values[0], rel=1e-6)  # no bias: the scores are the value
    assert [row["rank"] for row in out.table()[:4]] == [1, 2, 3, 4]


def test_a_conv_relu_step_gives_each_channels_term_of_the_preactivation():
    torch.manual_seed(0)
    model, images = RedNet().eval(), torch.rand(4, 3, 64, 64)
    with torch.no_grad():  # random conv1 and conv2, so both units fire at their peak on every image
        for conv in (model.conv1, model.conv2):
            conv.weight.normal_()
            conv.bias.normal_()
    targets = top_rows(model, "relu2", images, units=[0, 1])
    peaks = layer_output(model, "relu2", images)[targets.image, targets.unit, targets.y, targets.x]
    assert (peaks > 0).all()
    out = contributions(model, "relu2", "pool", images, targets, top=2)
    pooled = layer_output(model, "pool", images)
    for i, unit in enumerate(out.units):
        rows = np.flatnonzero(targets.unit == unit)
        terms = torch.zeros(2, dtype=torch.float64)
        for row in rows:  # channel c's term of the pre-activation, conv2 over the 5x5 window at the peak
            y, x = int(targets.y[row]), int(targets.x[row])
            window = F.pad(pooled[targets.image[row]], (2, 2, 2, 2))[:, y : y + 5, x : x + 5]
            terms += (model.conv2.weight[unit].detach() * window).sum(dim=(1, 2)).double() / len(rows)
        assert out.channels[i].tolist() == torch.argsort(-terms.abs()).tolist()
        np.testing.assert_allclose(out.scores[i], terms[out.channels[i]].numpy(), rtol=1e-5, atol=1e-6)
        bias = float(model.conv2.bias[unit].detach())
        assert out.scores[i].sum() == pytest.approx(out.values[i] - bias, rel=1e-5)


def brute_scores(model, layer: str, source: str, images, row: tuple) -> torch.Tensor:
    """A plain loop: one image, the source's output made a leaf, one backward for one unit."""
    image, unit, y, x = row
    modules = dict(model.named_modules())
    act = {}

    def leaf(_m, _i, output):
        act.setdefault("a", output.detach().requires_grad_(True))
        return act["a"].clone()

    out = {}
    handles = [modules[source].register_forward_hook(leaf),
               modules[layer].register_forward_hook(lambda _m, _i, o: out.setdefault("o", o))]  # fmt: skip
    model(images[image][None])
    for handle in handles:
        handle.remove()
    (grad,) = torch.autograd.grad(out["o"][0, unit, y, x], act["a"])
    return (grad * act["a"].detach()).sum(dim=(2, 3))[0].double()


@pytest.mark.parametrize("layer, source", [("layer4", "layer3"), ("layer4.0", "layer4.0.bn2")])
def test_scores_equal_a_plain_loop(layer, source):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()  # layer4.0: bn2's output then meets `out += identity`
    images = torch.randn(5, 3, 64, 64)
    targets = Targets(
        image=[0, 1, 2, 2, 3, 4], unit=[7, 7, 7, 9, 9, 9], y=[0, 1, 1, 0, 1, 0], x=[1, 0, 1, 1, 0, 0]
    )
    out = contributions(model, layer, source, images, targets, top=5, batch_size=2)
    for i, unit in enumerate(out.units):
        rows = np.flatnonzero(targets.unit == unit)
        rows = [(targets.image[r], unit, targets.y[r], targets.x[r]) for r in rows]
        mean = sum(brute_scores(model, layer, source, images, row) for row in rows) / len(rows)
        expected = torch.argsort(-mean.abs(), stable=True)[:5]
        assert out.channels[i].tolist() == expected.tolist()
        np.testing.assert_allclose(
            out.scores[i], mean[expected].numpy(), rtol=1e-4, atol=1e-6 * float(mean.abs().max())
        )
        assert out.total[i] == pytest.approx(float(mean.abs().sum()), rel=1e-4)


def test_backward_passes_one_per_unit_group():
    model, images = OneByOne().eval(), red_images(squares=[(8 * i, 4 * i) for i in range(6)])
    # 2 units x 3 distinct images, 3 images per pass: one pass per unit
    distinct = Targets(image=[0, 1, 2, 3, 4, 5], unit=[0, 0, 0, 1, 1, 1], y=[5] * 6, x=[5] * 6)
    out = contributions(model, "relu2", "relu1", images, distinct, batch_size=3)
    assert (out.forward_passes, out.backward_passes) == (2, 2)
    # 4 units on the same 3 images (units 2 and 3 of a wider net are units 0 and 1 again): one pass per unit
    shared = Targets(image=[0, 1, 2] * 2, unit=[0] * 3 + [1] * 3, y=[5] * 6, x=[5] * 6)
    out = contributions(model, "relu2", "relu1", images, shared, batch_size=8)
    assert (out.forward_passes, out.backward_passes) == (1, 2)
    # 10 units x 9 distinct images each, 36 images per pass: 4 units per backward pass
    many = Targets(image=list(range(90)), unit=np.repeat(np.arange(10) % 2, 9), y=[5] * 90, x=[5] * 90)
    out = contributions(model, "relu2", "relu1", images[np.arange(90) % 6], many, batch_size=36)
    assert out.backward_passes == math.ceil(90 / 36)


def test_refusals():
    model, images, one = OneByOne().eval(), red_images(), Targets(image=[0], unit=[0], y=[0], x=[0])
    with pytest.raises(InvalidInputError, match="is 'relu2' below 'relu1'"):
        contributions(model, "relu1", "relu2", images, one)
    with pytest.raises(InvalidInputError, match="at least one row"):
        contributions(model, "relu2", "relu1", images, Targets(image=[], unit=[], y=[], x=[]))
    with pytest.raises(InvalidInputError, match="top must be at least 1"):
        contributions(model, "relu2", "relu1", images, one, top=0)
