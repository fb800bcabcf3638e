"""Pixel projections: a unit's value at its recorded peak, carried back to the input pixels.

    model = torchvision.models.alexnet().eval()
    images = torch.randn(2, 3, 96, 96)                                 # normalized model inputs
    targets = Targets(image=[0, 1], unit=[5, 5], y=[2, 1], x=[0, 3])   # the unit's top-k rows
    out = project(model, "features.10", images, targets, method="guided")
    out.maps.shape                  # (2, 3, 96, 96) float32, one per row, in model-input pixels
    out.values                      # (2,) the unit's value at each peak, recomputed
    out.backward_passes             # 1: both rows in one backward pass

Methods and their rules: attribution.rules (deconvnet and guided raise UnsupportedActivationError at a
nonlinearity they have no rule for; they never fall back to the gradient). Each row's map is d(value)/d(input)
under those rules, so a row whose unit is 0 at the peak behind a ReLU has a zero guided map.

Batching (attribution.targets.plan_batches): every distinct image is forwarded once per call, `batch_size`
images per pass; each backward pass explains one row per image of its pass (its slot), so rows of many units
share a pass, and an image shared by several units is forwarded once. The maps are in model-input pixels;
mapping the receptive-field box back to original pixels is the caller's (pipeline.preprocess.to_original).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from actindex.pipeline.attribution.rules import BackwardRules, Method, to_method
from actindex.pipeline.attribution.targets import Batch, Targets, plan_batches
from actindex.pipeline.attribution.trace import (
    as_model_input,
    check_eval,
    find_module,
    forward_to,
    frozen,
    one_hot,
    peak_values,
)

if TYPE_CHECKING:
    import torch


DEFAULT_BATCH = 8  # distinct images per forward pass: fastest per image of 3, 6, 9, 18 on ResNet-50 at 224 px


@dataclass
class Projections:
    """Pixel projections of the rows of `Targets`, in their order."""

    maps: np.ndarray  # (R, 3, H, W) float32: d(unit value at peak)/d(input pixels) under the method's rules
    values: np.ndarray  # (R,) float32: the unit's value at its peak, recomputed (compare with the index's)
    method: str  # "deconvnet", "guided" or "gradient"
    layer: str  # the layer the units belong to
    forward_passes: int  # one per batch of distinct images
    backward_passes: int  # one per slot of each batch (attribution.targets)


def project(
    model: torch.nn.Module,
    layer: str,
    images: torch.Tensor | np.ndarray,
    targets: Targets,
    method: str | Method = Method.guided,
    batch_size: int = DEFAULT_BATCH,
) -> Projections:
    """Each row's projection: `images` are normalized (N, 3, H, W) model inputs, `targets` index them."""
    import torch

    method = to_method(method)
    module = find_module(model, layer)
    check_eval(model)
    images = torch.as_tensor(images)
    targets.check_images(len(images))
    maps = np.zeros((len(targets), *images.shape[1:]), dtype=np.float32)
    values = np.zeros(len(targets), dtype=np.float32)
    batches = plan_batches(targets.image, batch_size)
    with frozen(model), BackwardRules(model, method) as rules:
        for batch in batches:
            _project_batch(model, module, layer, rules, images, targets, batch, maps, values)
    passes = sum(len(batch.slots) for batch in batches)
    return Projections(maps, values, method.value, layer, len(batches), passes)


def _project_batch(model, module, layer, rules, images, targets, batch: Batch, maps, values) -> None:
    """One forward over the batch's images, then one backward pass per slot; fills maps[rows]."""
    import torch

    x = as_model_input(images[torch.as_tensor(batch.images)], model).requires_grad_(True)
    with rules.audit():
        out = forward_to(model, module, layer, x.clone())  # a copy: an in-place first op must spare the leaf
    targets.check(out.shape, layer)
    for slot, (rows, pos) in enumerate(batch.slots):
        where = (pos, targets.unit[rows], targets.y[rows], targets.x[rows])
        keep = slot + 1 < len(batch.slots)  # the graph serves the batch's next slot
        (grad,) = torch.autograd.grad(out, x, one_hot(out, *where), retain_graph=keep)
        maps[rows] = grad[torch.as_tensor(pos)].float().numpy()
        values[rows] = peak_values(out, *where).numpy()
