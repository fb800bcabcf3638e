"""Whole maps of units, and class activation maps where a layer has no extent, on the planted network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from actindex.pipeline.recorder import ActivationRecorder
from actindex.pipeline.unit_maps import CamMismatchError, UnitMapper
from tests.conftest import PLANTED_PREP, PlantedNet

W = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
B = torch.tensor([0.3, -0.2])


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Two 64x64 inputs: a red square on grey (red detector 0), a dark-to-bright edge (edge detector 1)."""
    out = np.full((2, 3, 64, 64), 128, dtype=np.uint8)
    out[0, :, 20:28, 30:38] = np.array([240, 10, 10], dtype=np.uint8)[:, None, None]
    out[1, :, :, :40], out[1, :, :, 40:] = 0, 255
    return out


def _averaging_net() -> PlantedNet:
    """PlantedNet with global average pooling under its Linear (made W, B): what CAM explains exactly."""
    net = PlantedNet()
    net.head[0] = nn.AdaptiveAvgPool2d(1)
    with torch.no_grad():
        net.head[2].weight.copy_(W)
        net.head[2].bias.copy_(B)
    return net


def _relu2(net: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """relu2's output by a plain forward (the oracle)."""
    x = torch.as_tensor(pixels).float() / 255
    with torch.no_grad():
        return net.relu2(net.conv2(net.pool(net.relu1(net.conv1(x))))).numpy()


def test_maps_of_a_spatial_layer_are_its_output_and_their_max_is_what_the_index_records(pixels):
    net = PlantedNet()
    maps = UnitMapper(net, "relu2", PLANTED_PREP)(pixels, [1, 0])
    assert maps.source == "relu2" and not maps.cam and maps.values.shape == (2, 2, 32, 32)
    np.testing.assert_array_equal(maps.values, _relu2(net, pixels)[:, [1, 0]])
    recorded, _ = ActivationRecorder(net, ["relu2"], PLANTED_PREP)(pixels)["relu2"]
    np.testing.assert_array_equal(maps.outputs, recorded[:, [1, 0]])


def test_a_logit_after_average_pooling_gets_its_class_activation_map(pixels):
    net = _averaging_net()
    maps = UnitMapper(net, "head", PLANTED_PREP)(pixels, [0, 1])
    assert maps.cam and maps.source == "relu2" and maps.values.shape == (2, 2, 32, 32)
    features = _relu2(net, pixels)
    expected = np.einsum("uc,bchw->buhw", W.numpy(), features) + B.numpy()[None, :, None, None]
    np.testing.assert_allclose(maps.values, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        logits = net(torch.as_tensor(pixels).float() / 255).numpy()
    np.testing.assert_allclose(maps.outputs, logits, rtol=1e-6)
    np.testing.assert_allclose(maps.values.mean(axis=(2, 3)), logits, rtol=1e-4, atol=1e-5)


def test_a_pooled_layer_without_a_linear_maps_its_channels_before_pooling(pixels):
    net = _averaging_net()
    maps = UnitMapper(net, "head.0", PLANTED_PREP)(pixels, [0])  # (B, 2, 1, 1) global average
    assert maps.cam and maps.source == "relu2"
    np.testing.assert_allclose(maps.values, _relu2(net, pixels)[:, [0]], rtol=1e-6)


def test_a_logit_after_max_pooling_is_refused_with_what_to_do(pixels):
    with pytest.raises(CamMismatchError, match=r"not the spatial mean .* 'relu2'.*without --mask"):
        UnitMapper(PlantedNet(), "head", PLANTED_PREP)(pixels, [0])


def test_hooks_are_removed_after_each_call_even_a_refused_one(pixels):
    net = PlantedNet()
    with pytest.raises(CamMismatchError):
        UnitMapper(net, "head", PLANTED_PREP)(pixels, [0])
    UnitMapper(net, "relu1", PLANTED_PREP)(pixels, [0])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_one_forward_maps_several_layers_as_a_call_per_layer_would(pixels):
    net = _averaging_net()
    mapper = UnitMapper(net, ["relu1", "head", "relu2"], PLANTED_PREP)
    both = mapper.maps_of(pixels, {"relu2": [1], "head": [1, 0], "relu1": [0]})
    for layer, units in (("relu2", [1]), ("head", [1, 0]), ("relu1", [0])):
        alone = UnitMapper(net, layer, PLANTED_PREP)(pixels, units)
        assert (both[layer].source, both[layer].cam) == (alone.source, alone.cam)
        np.testing.assert_array_equal(both[layer].values, alone.values)
        np.testing.assert_array_equal(both[layer].outputs, alone.outputs)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_a_layer_without_a_map_is_refused_alone_and_the_others_are_mapped(pixels):
    net = PlantedNet()  # head: max pooling under its Linear
    found = UnitMapper(net, ["relu2", "head"], PLANTED_PREP).maps_of(pixels, {"relu2": [0], "head": [0]})
    assert isinstance(found["head"], CamMismatchError) and "without --mask" in str(found["head"])
    np.testing.assert_array_equal(found["relu2"].values, _relu2(net, pixels)[:, [0]])
