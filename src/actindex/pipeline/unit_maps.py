"""Whole feature maps of chosen units (the index keeps only their maxima), or class activation maps.

    mapper = UnitMapper(model, "layer4", preprocessing)     # hooks attached inside each call only
    maps = mapper(pixels, units=[17, 3])    # pixels: (B, 3, crop, crop) uint8 -> UnitMaps
    maps.values      # (B, 2, h, w) float32: the units' maps
    maps.outputs     # (B, 2) float32: what the index records for them (the map's max; a logit for CAM)
    maps.source      # the layer the maps come from: "layer4", or the feature map under a logit layer
    both = UnitMapper(model, ["layer3", "fc"], preprocessing).maps_of(pixels, {"layer3": [0], "fc": [7]})
    both["fc"]       # UnitMaps, or the CamMismatchError that refuses the layer: one forward serves all

Several layers are traced in one forward pass, which stops once the last of them has run.

A layer whose output has no spatial extent (a (B, C) logit, a 1x1 pooled map) gets a class activation
map (CAM, Zhou et al. 2016): the last 4-D feature map F with more than one position that was computed
before the layer's Linear ran, and whose channel count is the Linear's in_features (the input of the global
pool), is multiplied pointwise by the Linear's weights, CAM_k(y, x) = W[k] . F[:, y, x] + b[k]. For a layer
without a Linear (a pooled or flattened map itself) the weights are the identity: the map of channel k.
Every call checks that the spatial mean of each CAM equals the layer's own output in that same forward
(it does exactly when the layer is global average pooling followed by the Linear); where it does not (max
pooling, layers between the pool and the Linear, a softmax) the call refuses (CamMismatchError) rather than
draw a map the output was not computed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.recorder import ForwardHooks, StopForward

if TYPE_CHECKING:
    import torch


CAM_RTOL, CAM_ATOL = 1e-4, 1e-4  # float32 sums of a few thousand products agree to ~1e-6 relative


class CamMismatchError(InvalidInputError):
    """A layer without spatial extent whose output is not the spatial mean of a class activation map."""


@dataclass
class UnitMaps:
    values: np.ndarray  # (B, U, h, w) float32: each unit's map, in the order the units were asked for
    outputs: np.ndarray  # (B, U) float32: the layer's value the index records (map max; logit for CAM)
    source: str  # the layer whose positions the maps are on (the layer itself, or the CAM's feature map)
    cam: bool  # the maps are class activation maps of `source` through the layer's weights


class UnitMapper:
    """A stage: uint8 pixels -> the chosen units' whole maps at one or more layers (CAM for layers without
    extent), all from one forward pass."""

    def __init__(
        self,
        model: torch.nn.Module,
        layer: str | Sequence[str],
        preprocessing: Preprocessing,
        device: str = "cpu",
    ):
        import torch

        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.layers = [layer] if isinstance(layer, str) else list(layer)
        self.layer = self.layers[0]
        self.modules = dict(self.model.named_modules())
        for name in self.layers:
            if name not in self.modules:
                raise InvalidInputError(f"layer {name!r} is not a module of this model")
        self.mean = torch.tensor(preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std, device=self.device).view(1, 3, 1, 1)

    def __call__(self, pixels: np.ndarray | torch.Tensor, units: Sequence[int]) -> UnitMaps:
        """The maps of `units` at the mapper's (first) layer; CamMismatchError where it has none."""
        result = self.maps_of(pixels, {self.layer: units})[self.layer]
        if isinstance(result, CamMismatchError):
            raise result
        return result

    def maps_of(
        self, pixels: np.ndarray | torch.Tensor, units: dict[str, Sequence[int]]
    ) -> dict[str, UnitMaps | CamMismatchError]:
        """{layer: the maps of its `units`} for the layers of `units` (some of the mapper's), from one forward
        that stops after the last of them; a layer without a class activation map gets the error instead."""
        import torch

        with torch.inference_mode():
            x = (torch.as_tensor(pixels).to(self.device).float().div_(255.0) - self.mean) / self.std
            weights = {layer: self._weights_module(layer) for layer in units}
            with _FeatureTrace(self.modules, weights) as trace:
                self.model(x)
            return {layer: self._layer_maps(trace, layer, chosen) for layer, chosen in units.items()}

    def _layer_maps(
        self, trace: _FeatureTrace, layer: str, units: Sequence[int]
    ) -> UnitMaps | CamMismatchError:
        import torch

        output = trace.outputs.get(layer)
        if output is None:
            raise RuntimeError(f"layer {layer!r} was not reached by the forward pass")
        index = torch.as_tensor(list(units), dtype=torch.long, device=self.device)
        if _has_extent(output):
            maps = output[:, index].float()
            return _numpy(maps, maps.flatten(2).amax(dim=2), layer, cam=False)
        try:
            return self._cam(trace, layer, output.flatten(1)[:, index].float(), index)
        except CamMismatchError as exc:
            return exc

    def _weights_module(self, layer: str) -> torch.nn.Module:
        """The Linear whose weights make the CAM: the layer itself or the last Linear inside it; the layer
        when it has none (identity weights)."""
        import torch

        module = self.modules[layer]
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        return linears[-1] if linears else module

    def _cam(self, trace: _FeatureTrace, layer: str, outputs: torch.Tensor, index: torch.Tensor) -> UnitMaps:
        import torch

        weights_module = trace.weights[layer]
        if isinstance(weights_module, torch.nn.Linear):
            channels = weights_module.in_features
            weight = weights_module.weight[index].float()
            bias = weights_module.bias[index].float() if weights_module.bias is not None else None
        else:
            channels, weight, bias = int(trace.outputs[layer].shape[1]), None, None
        name, features = trace.before.get(layer, {}).get(channels, (None, None))
        if features is None:
            raise CamMismatchError(
                f"layer {layer!r} has no spatial extent and no feature map of {channels} channels with "
                "more than one position feeds it: it has no class activation map; draw it without --mask"
            )
        if weight is None:
            cam = features[:, index].float()
        else:
            cam = torch.einsum("uc,bchw->buhw", weight, features.float())
            cam = cam + bias.view(1, -1, 1, 1) if bias is not None else cam
        _check_cam(layer, name, cam, outputs)
        return _numpy(cam, outputs, name, cam=True)


def _check_cam(layer: str, source: str, cam: torch.Tensor, outputs: torch.Tensor) -> None:
    """The CAM explains the layer only when its spatial mean is the layer's output (average pooling)."""
    import torch

    means = cam.mean(dim=(2, 3))
    if torch.allclose(means, outputs, rtol=CAM_RTOL, atol=CAM_ATOL * max(1.0, float(outputs.abs().max()))):
        return
    worst = float((means - outputs).abs().max())
    raise CamMismatchError(
        f"layer {layer!r} has no spatial extent, and its output is not the spatial mean of the class "
        f"activation map of {source!r} (they differ by up to {worst:.3g}: max pooling, or layers between "
        "the global pool and the Linear?); masks need global average pooling then a Linear: draw this "
        "layer without --mask"
    )


def _has_extent(output: torch.Tensor) -> bool:
    """A (B, C, H, W) feature map of more than one position."""
    return output.dim() == 4 and output.shape[2] * output.shape[3] > 1


def _numpy(maps: torch.Tensor, outputs: torch.Tensor, source: str, cam: bool) -> UnitMaps:
    return UnitMaps(maps.cpu().numpy(), outputs.cpu().numpy(), source, cam)


class _FeatureTrace(ForwardHooks):
    """Context manager: the whole output of each layer of `weights` ({layer: the module whose weights make
    its CAM}) and, for CAM, the last 4-D output of more than one position per channel count that existed
    when the layer's weights module started; stops the forward once every layer has run; hooks always
    detach."""

    def __init__(self, modules: dict[str, torch.nn.Module], weights: dict[str, torch.nn.Module]):
        self.modules, self.weights = modules, weights
        self.outputs: dict[str, torch.Tensor] = {}
        self.latest: dict[int, tuple[str, torch.Tensor]] = {}  # channels -> (module name, its output)
        self.before: dict[
            str, dict[int, tuple[str, torch.Tensor]]
        ] = {}  # layer -> `latest` as its weights start

    def _attach(self) -> list:
        # the model itself ends last: its output feeds nothing
        handles = [m.register_forward_hook(self._remember(name)) for name, m in self.modules.items() if name]
        for layer, module in self.weights.items():
            handles.append(module.register_forward_pre_hook(self._snapshot(layer)))
        for layer in self.weights:
            handles.append(self.modules[layer].register_forward_hook(self._keep(layer)))
        return handles

    def _remember(self, name: str):
        import torch

        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and _has_extent(output):
                self.latest[int(output.shape[1])] = (name, output)

        return hook

    def _snapshot(self, layer: str):
        def hook(_module, _inputs) -> None:
            if (
                layer not in self.before
            ):  # a module called twice in one forward counts its first call, as indexed
                self.before[layer] = dict(self.latest)

        return hook

    def _keep(self, layer: str):
        def hook(_module, _inputs, output) -> None:
            self.outputs.setdefault(layer, output)
            if len(self.outputs) == len(self.weights):
                raise StopForward

        return hook
