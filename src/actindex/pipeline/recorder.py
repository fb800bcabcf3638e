"""Run a CNN on a batch and keep, per image and unit, the spatial max and where it peaked.

    recorder = ActivationRecorder(model, ["layer3", "layer4"], preprocessing, device="cpu")
    out = recorder(pixels)           # pixels: (B, 3, H, W) uint8
    act, pos = out["layer4"]         # (B, U) float32 maxima, (B, U) int32 flat positions y * W + x
    out = recorder.submit(pixels).result()   # the interface pipeline.loop runs (pipeline.gpu's is async)

Hooks live only inside each call (`LayerTrace` removes them even when the forward fails), and the forward
stops as soon as the last chosen layer has been seen. Only (B, U) values leave the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from actindex.pipeline.layers import describe_layers
from actindex.pipeline.loop import Ready
from actindex.pipeline.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch


class StopForward(Exception):
    """Raised by a hook once it has what it needs, so the layers after it never run."""


class ForwardHooks:
    """Context manager base: the hooks `_attach` registers on entry are removed on exit, even when the
    forward fails; a StopForward raised by one of them ends the forward quietly."""

    def _attach(self) -> list:
        """The handles of the hooks registered."""
        raise NotImplementedError

    def __enter__(self):
        self._handles = self._attach()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return exc_type is StopForward


class LayerTrace(ForwardHooks):
    """Context manager: reduce chosen modules' outputs to per-unit (max, argmax); hooks always detach."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[str]):
        modules = dict(model.named_modules())
        self.targets = {name: modules[name] for name in layers}
        self.reduced: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _attach(self) -> list:
        return [module.register_forward_hook(self._hook(name)) for name, module in self.targets.items()]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if (
                name in self.reduced
            ):  # a module reused in one forward (resnet's block relu) records its first call
                return
            self.reduced[name] = reduce_units(output)
            if len(self.reduced) == len(self.targets):
                raise StopForward

        return hook


def reduce_units(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> per-unit max and flat argmax (first maximum); (B, C) -> the values and zeros."""
    import torch

    if output.dim() == 2:
        # a copy: a later in-place op in the same forward (ReLU(inplace=True) after a Linear) would change it
        return output.to(torch.float32, copy=True), torch.zeros(
            output.shape, dtype=torch.int32, device=output.device
        )
    if output.dim() != 4:
        raise ValueError(f"layer output has shape {tuple(output.shape)}; only (B, C, H, W) and (B, C) work")
    flat = output.flatten(2)
    return flat.amax(dim=2).float(), flat.argmax(dim=2).int()


class ActivationRecorder:
    """A stage: uint8 pixels -> {layer: (act (B, U) float32, pos (B, U) int32)} as numpy arrays."""

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[str],
        preprocessing: Preprocessing,
        device: str = "cpu",
    ):
        import torch

        self.device = torch.device(device)
        self.layers = list(layers)
        crop = (preprocessing.crop, preprocessing.crop)
        self.units = {
            name: info.channels for name, info in describe_layers(model.eval(), layers, crop).items()
        }
        self.model = model.to(self.device)
        self.mean = torch.tensor(preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std, device=self.device).view(1, 3, 1, 1)

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        import torch

        x = torch.as_tensor(pixels).to(self.device, non_blocking=True).float().div_(255.0)
        return (x - self.mean) / self.std

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        import torch

        with torch.inference_mode():
            x = self.normalize(pixels)
            with LayerTrace(self.model, self.layers) as trace:
                self.model(x)
        missing = [name for name in self.layers if name not in trace.reduced]
        if missing:
            raise RuntimeError(f"layers {missing} were not reached by the forward pass")
        return {name: (act.cpu().numpy(), pos.cpu().numpy()) for name, (act, pos) in trace.reduced.items()}

    def submit(self, pixels: np.ndarray | torch.Tensor):
        """The asynchronous interface of pipeline.loop, synchronously: the results are ready on return."""

        return Ready(self(pixels))
