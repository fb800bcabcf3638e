"""The rule of every activation type (the table in attribution.rules), and the refusal of those without."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actindex.pipeline.attribution.projection import project
from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.errors import UnsupportedActivationError

ONE = Targets(image=[0], unit=[0], y=[0], x=[0])


def elementwise_net(activation: nn.Module) -> nn.Module:
    """input (3 channels) -> activation -> 1x1 conv with weights (1, -1, 1): pixel (c, 0, 0) of unit 0's
    projection shows the activation's rule at x = input[c] with a backward signal of w[c]."""
    net = nn.Sequential(nn.Identity(), activation, nn.Conv2d(3, 1, 1, bias=False)).eval()
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1))
    return net


def rule(activation: nn.Module, x: list[float], method: str) -> list[float]:
    images = torch.tensor(x).view(1, 3, 1, 1)
    return project(elementwise_net(activation), "2", images, ONE, method).maps[0, :, 0, 0].tolist()


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(), nn.ReLU6(inplace=True)])
def test_relu_and_relu6_rules(activation):
    # channels: inside the linear range (signal +1), inside (signal -1), above 6 (signal +1)
    x = [3.0, 3.0, 8.0]
    saturated = 0.0 if isinstance(activation, nn.ReLU6) else 1.0  # ReLU6's own derivative is 0 above 6
    assert rule(activation, x, "gradient") == [1.0, -1.0, saturated]
    assert rule(activation, x, "deconvnet") == [1.0, 0.0, 1.0]  # relu(signal), the forward ignored
    assert rule(activation, x, "guided") == [1.0, 0.0, saturated]  # derivative x rectified signal
    below = [-2.0, -2.0, -2.0]
    assert rule(activation, below, "deconvnet") == [1.0, 0.0, 1.0]
    assert rule(activation, below, "guided") == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "activation", [nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.Mish(), nn.LeakyReLU(), nn.ELU()]
)
def test_smooth_rectifiers_are_ruled_as_relu(activation):
    x = torch.tensor([1.5, 1.5, -3.0], requires_grad=True)
    derivative = torch.autograd.grad(activation(x).sum(), x)[0].tolist()
    assert rule(activation, x.tolist(), "deconvnet") == [1.0, 0.0, 1.0]
    guided = rule(activation, x.tolist(), "guided")
    assert guided == pytest.approx([derivative[0], 0.0, derivative[2]], abs=1e-7)
    assert rule(activation, x.tolist(), "gradient") == pytest.approx(
        [derivative[0], -derivative[1], derivative[2]], abs=1e-7
    )


class SqueezeExcite(nn.Module):
    """conv -> ReLU -> x * sigmoid(fc(mean(x))), the gate optionally detached (no signal up its branch)."""

    def __init__(self, detach_gate: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.fc, self.gate = nn.Conv2d(4, 4, 1), nn.Sigmoid()
        self.out = nn.Conv2d(4, 2, 3)
        self.detach_gate = detach_gate

    def forward(self, x):
        x = self.relu(self.conv(x))
        gate = self.gate(self.fc(x.mean(dim=(2, 3), keepdim=True)))
        return self.out(x * (gate.detach() if self.detach_gate else gate))


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_gates_pass_no_signal_up_their_branch(method):
    images = torch.rand(2, 3, 12, 12)
    targets = Targets(image=[0, 1], unit=[1, 0], y=[3, 5], x=[4, 2])
    gated = project(SqueezeExcite().eval(), "out", images, targets, method).maps
    constant = project(SqueezeExcite(detach_gate=True).eval(), "out", images, targets, method).maps
    plain = project(SqueezeExcite().eval(), "out", images, targets, "gradient").maps
    torch.testing.assert_close(torch.as_tensor(gated), torch.as_tensor(constant), rtol=0, atol=1e-7)
    assert abs(gated).max() > 0 and not torch.allclose(torch.as_tensor(gated), torch.as_tensor(plain))


class Functional(nn.Module):
    """A nonlinearity called as a function, not a module: no module hook can rule it."""

    def __init__(self, function):
        super().__init__()
        self.conv, self.function, self.out = nn.Conv2d(3, 4, 3), function, nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.function(self.conv(x)))


UNRULED = {
    "Tanh module": nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 2, 1)),
    "Softplus module": nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Conv2d(4, 2, 1)),
    "Hardtanh(-1, 1)": nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh(), nn.Conv2d(4, 2, 1)),
    "F.relu": Functional(F.relu),
    "Tensor.relu": Functional(torch.Tensor.relu),
    "clamp(min=0)": Functional(lambda x: x.clamp(min=0)),
    "x * sigmoid(x)": Functional(lambda x: x * torch.sigmoid(x)),
    "sigmoid map (not a gate)": nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Conv2d(4, 2, 1)),
}


@pytest.mark.parametrize("name", list(UNRULED))
@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_a_nonlinearity_without_rule_raises(name, method):
    model = UNRULED[name].eval()
    layer = "out" if isinstance(model, Functional) else "2"
    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(UnsupportedActivationError, match="method='gradient'"):
        project(model, layer, images, ONE, method)
    assert project(model, layer, images, ONE, "gradient").maps.shape == (1, 3, 8, 8)  # it needs no rule


def test_the_error_names_the_function_and_the_module():
    with pytest.raises(UnsupportedActivationError, match=r"relu\(\) is called in 'the model' \(Functional\)"):
        project(Functional(F.relu).eval(), "out", torch.rand(1, 3, 8, 8), ONE, "guided")
    with pytest.raises(UnsupportedActivationError, match=r"tanh\(\) is called in '1' \(Tanh\)"):
        project(UNRULED["Tanh module"].eval(), "2", torch.rand(1, 3, 8, 8), ONE, "deconvnet")


def test_nothing_is_left_attached():
    model = UNRULED["Tanh module"].eval()
    with pytest.raises(UnsupportedActivationError):
        project(model, "2", torch.rand(1, 3, 8, 8), ONE, "guided")
    hooks = [m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()]
    assert not any(hooks)
    assert all(p.requires_grad for p in model.parameters())  # frozen only inside the call


@pytest.mark.parametrize("norm", [nn.GroupNorm(1, 4), nn.LayerNorm([4, 6, 6]), nn.BatchNorm2d(4)])
@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_normalizations_keep_their_exact_gradient(norm, method):
    # conv -> norm -> ReLU -> conv: with the ReLU's rule written out, the norm's plain gradient is the rest
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    images = torch.rand(1, 3, 8, 8)
    targets = Targets(image=[0], unit=[1], y=[2], x=[1])
    ours = project(model, "3", images, targets, method).maps[0]
    rule = {"deconvnet": lambda _m, _gin, gout: (gout[0].clamp(min=0),),
            "guided": lambda _m, gin, _gout: (gin[0].clamp(min=0),)}[method]  # fmt: skip
    handle = model[2].register_full_backward_hook(rule)
    x = images.clone().requires_grad_(True)
    expected = torch.autograd.grad(model(x)[0, 1, 2, 1], x)[0][0]
    handle.remove()
    torch.testing.assert_close(
        torch.as_tensor(ours), expected, rtol=0, atol=1e-6 * float(expected.abs().max())
    )
