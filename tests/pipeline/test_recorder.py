"""ActivationRecorder against a brute-force numpy reduction of plain forward-hook outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.recorder import ActivationRecorder, LayerTrace, reduce_units

PREP = Preprocessing(resize=64, crop=64)
LAYERS = ["layer1", "layer2.0.conv1", "layer3", "layer4"]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)


def normalized(pixels: np.ndarray, prep: Preprocessing = PREP) -> torch.Tensor:
    x = pixels.astype(np.float32) / 255.0
    mean = np.array(prep.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(prep.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return torch.from_numpy((x - mean) / std)


def plain_outputs(
    model: nn.Module, x: torch.Tensor, layers: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every chosen layer's full output (first call) and the model's final output, with plain hooks."""
    modules = dict(model.named_modules())
    outputs: dict[str, np.ndarray] = {}

    def keep(name):
        def hook(_m, _i, out):
            outputs.setdefault(name, out.detach().numpy().copy())

        return hook

    handles = [modules[name].register_forward_hook(keep(name)) for name in layers]
    try:
        with torch.no_grad():
            final = model(x).numpy()
    finally:
        for h in handles:
            h.remove()
    return outputs, final


def brute_reduce(output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = output.reshape(output.shape[0], output.shape[1], -1)
    return flat.max(axis=2), flat.argmax(axis=2)  # numpy argmax: first maximum


def test_recorder_equals_brute_force(model: nn.Module, pixels: np.ndarray) -> None:
    recorder = ActivationRecorder(model, LAYERS, PREP)
    assert recorder.units == {"layer1": 64, "layer2.0.conv1": 128, "layer3": 256, "layer4": 512}
    out = recorder(pixels)
    assert list(out) == LAYERS
    expected, _ = plain_outputs(model, normalized(pixels), LAYERS)
    for name in LAYERS:
        act, pos = out[name]
        want_act, want_pos = brute_reduce(expected[name])
        assert act.shape == pos.shape == (3, recorder.units[name])
        assert act.dtype == np.float32 and pos.dtype == np.int32
        np.testing.assert_allclose(act, want_act, rtol=1e-5, atol=1e-6)
        # positions are compared where the maximum is unique beyond float noise
        flat = expected[name].reshape(3, recorder.units[name], -1)
        second = np.sort(flat, axis=2)[:, :, -2]
        clear = (want_act - second) > 1e-4
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(pos[clear], want_pos[clear])
        # and everywhere, pos points at a value equal to the maximum
        at_pos = np.take_along_axis(flat, pos[..., None].astype(np.int64), axis=2)[..., 0]
        np.testing.assert_allclose(at_pos, want_act, rtol=1e-5, atol=1e-6)


def test_recorder_accepts_torch_tensors(model: nn.Module, pixels: np.ndarray) -> None:
    recorder = ActivationRecorder(model, ["layer4"], PREP)
    a = recorder(pixels)["layer4"]
    b = recorder(torch.from_numpy(pixels))["layer4"]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_linear_layer_gives_logits_and_zero_positions(model: nn.Module, pixels: np.ndarray) -> None:
    recorder = ActivationRecorder(model, ["fc"], PREP)
    assert recorder.units == {"fc": 1000}
    act, pos = recorder(pixels)["fc"]
    _, logits = plain_outputs(model, normalized(pixels), [])
    np.testing.assert_allclose(act, logits, rtol=1e-5, atol=1e-5)
    assert pos.shape == (3, 1000) and pos.dtype == np.int32
    assert np.all(pos == 0)


def test_ties_give_the_first_maximum() -> None:
    zero = nn.Conv2d(3, 4, 3, padding=1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    recorder = ActivationRecorder(nn.Sequential(zero, nn.ReLU()), ["1"], Preprocessing(resize=8, crop=8))
    act, pos = recorder(np.random.default_rng(1).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8))["1"]
    assert np.all(act == 0) and np.all(pos == 0)


def test_ties_away_from_the_origin_give_the_first_maximum() -> None:
    recorder = ActivationRecorder(nn.Sequential(nn.Identity()), ["0"], Preprocessing(resize=6, crop=6))
    pixels = np.zeros((1, 3, 6, 6), dtype=np.uint8)
    pixels[0, 0, 4, 1] = 255  # flat 25, appears after ...
    pixels[0, 0, 2, 3] = 255  # flat 15: the first of the two maxima
    pixels[0, 1, 5, 5] = 255  # flat 35
    pixels[0, 2] = 7  # all equal: first position 0
    act, pos = recorder(pixels)["0"]
    assert pos.tolist() == [[15, 35, 0]]
    assert act[0, 0] == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)


def test_reduce_units_rejects_3d_output() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        reduce_units(torch.zeros(2, 3, 4))


class CallCounter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


def test_forward_stops_after_the_last_chosen_layer() -> None:
    counter = CallCounter()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), counter)
    recorder = ActivationRecorder(model, ["2", "0"], Preprocessing(resize=10, crop=10))
    counter.calls = 0  # describe_layers ran the whole model once at construction
    out = recorder(np.zeros((2, 3, 10, 10), dtype=np.uint8))
    assert counter.calls == 0
    assert set(out) == {"0", "2"}
    assert out["0"][0].shape == (2, 4) and out["2"][0].shape == (2, 4)
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_removed_after_a_call(model: nn.Module, pixels: np.ndarray) -> None:
    recorder = ActivationRecorder(model, ["layer2", "layer3.1.conv2"], PREP)
    assert all(not m._forward_hooks for m in model.modules())
    recorder(pixels)
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_removed_after_a_failing_forward() -> None:
    bomb = Exploding()
    chosen = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bomb, chosen, nn.Conv2d(4, 2, 1))
    recorder = ActivationRecorder(model, ["2", "3"], Preprocessing(resize=8, crop=8))
    bomb.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        recorder(np.zeros((1, 3, 8, 8), dtype=np.uint8))
    assert all(not m._forward_hooks for m in model.modules())
    bomb.armed = False
    out = recorder(np.zeros((1, 3, 8, 8), dtype=np.uint8))
    assert set(out) == {"2", "3"}


def test_layer_trace_removes_hooks_when_the_body_raises() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(KeyError), LayerTrace(model, ["1"]):
        assert model[1]._forward_hooks
        raise KeyError("x")
    assert all(not m._forward_hooks for m in model.modules())


def test_linear_layer_values_survive_a_later_inplace_relu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).eval()
    recorder = ActivationRecorder(model, ["1", "3"], Preprocessing(resize=4, crop=4))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    expected, logits = plain_outputs(model, normalized(pixels, Preprocessing(resize=4, crop=4)), ["1"])
    assert (expected["1"] < 0).any()  # the pre-ReLU values include negatives
    out = recorder(pixels)
    np.testing.assert_allclose(out["3"][0], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["1"][0], expected["1"], rtol=1e-5, atol=1e-6)
