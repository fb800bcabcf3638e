"""prepare(): the same outputs and maps in a faster layout; the caller's model untouched; keep and fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from actindex.pipeline.attribution.contributions import contributions
from actindex.pipeline.attribution.prepare import prepare
from actindex.pipeline.attribution.projection import project
from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.errors import InvalidInputError
from tests.pipeline.attribution.conftest import layer_output


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    for module in model.modules():  # non-trivial statistics, so folding has something to fold
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model, torch.randn(3, 3, 64, 64)


def test_outputs_are_unchanged_and_batch_norms_are_gone(resnet):
    model, images = resnet
    fast = prepare(model, keep=["layer3"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the caller's model untouched
    assert all(p.requires_grad for p in model.parameters())
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for layer in ("layer3", "layer4.1.bn2"):  # a folded norm's name still gives its output
        expected = layer_output(model, layer, images)
        torch.testing.assert_close(layer_output(fast, layer, images), expected, rtol=1e-4, atol=1e-5)


def test_projections_and_contributions_are_unchanged(resnet):
    model, images = resnet
    fast = prepare(model, keep=["layer4", "layer3"])
    targets = Targets(image=[0, 1, 2, 2], unit=[3, 3, 9, 4], y=[0, 1, 1, 0], x=[1, 0, 1, 1])
    for method in ("gradient", "guided", "deconvnet"):
        slow, quick = (project(m, "layer4", images, targets, method).maps for m in (model, fast))
        assert np.linalg.norm(quick - slow) < 1e-4 * np.linalg.norm(slow), method
    slow, quick = (contributions(m, "layer4", "layer3", images, targets) for m in (model, fast))
    assert (quick.channels == slow.channels).all()
    np.testing.assert_allclose(quick.scores, slow.scores, rtol=1e-4, atol=1e-5 * np.abs(slow.scores).max())


def test_kept_layers_are_not_folded(resnet):
    model, images = resnet
    fast = prepare(model, keep=["layer1.0.conv1"])
    assert isinstance(fast.layer1[0].bn1, nn.BatchNorm2d)
    expected = layer_output(model, "layer1.0.conv1", images)
    torch.testing.assert_close(layer_output(fast, "layer1.0.conv1", images), expected, rtol=1e-5, atol=1e-5)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) if x.sum() > 0 else self.conv(x)  # control flow on data: fx cannot


def test_an_untraceable_model_is_refused_unless_fold_is_off():
    with pytest.raises(InvalidInputError, match="fold=False"):
        prepare(Untraceable().eval())
    assert isinstance(prepare(Untraceable().eval(), fold=False).bn, nn.BatchNorm2d)
