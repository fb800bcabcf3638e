"""Which channels of a lower layer make a unit's value at its peaks: activation x gradient, per channel.

    model = torchvision.models.resnet18().eval()
    images = torch.randn(4, 3, 64, 64)                                 # normalized model inputs
    targets = Targets(image=[0, 1, 2, 3], unit=[7, 7, 3, 3], y=[0, 1, 1, 0], x=[1, 0, 1, 1])
    out = contributions(model, "layer4", "layer3", images, targets, top=16)
    out.units                       # [7, 3]: each unit once, in the order the rows name them
    out.channels[0], out.shares[0]  # unit 7's 16 strongest layer3 channels, and their share of the total
    out.table()                     # rows {unit, rank, channel, score, share}, ready for a table

For unit u of `layer` and channel c of `source`, on one top image with u's peak at p:
    score(u, c) = sum over positions q of A_c(q) * d u(p) / d A_c(q)
(A: source's output on that image; the gradient is the plain one, holding anything that reaches `layer`
without passing through `source` constant), averaged over u's rows (its top-k images). Only the N largest
|score| are kept (ties: lower channel first), with share = score / sum over all channels of |score| and
rank 1..N.

What it equals. When `source` feeds `layer` through one convolution and a ReLU, u = ReLU(b + sum_c W_c * A_c)
at p, and u is positive there, the gradient is W's weights and score(u, c) is exactly channel c's term of the
pre-activation, sum_q W[u, c, q - p] A_c(q): the scores add up to the unit's value minus the bias. Through
more layers it is the first-order (gradient x input) share of each channel, which adds up to the value only
when the path is piecewise linear and without biases; `values` and `total` help judge how much is explained.

Batching (attribution.targets.plan_batches): each distinct image is forwarded once per call; source's output
is made a leaf, so nothing below it keeps a graph and no backward reaches it; each backward pass (a slot)
gives the gradients of one row per image of the pass, so units whose top images are distinct take
ceil(rows / batch_size) backward passes, and units that share their k images one pass per unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from actindex.pipeline.attribution.targets import Batch, Targets, plan_batches
from actindex.pipeline.attribution.trace import (
    LayerCapture,
    as_model_input,
    check_eval,
    find_module,
    frozen,
    one_hot,
    peak_values,
)
from actindex.pipeline.errors import InvalidInputError

if TYPE_CHECKING:
    import torch


DEFAULT_TOP = 16
DEFAULT_BATCH = 16  # distinct images per forward pass


@dataclass
class Contributions:
    """The strongest source channels of each unit, over its rows."""

    units: np.ndarray  # (U,) int64: each unit of the rows once, in the order the rows first name them
    channels: np.ndarray  # (U, N) int64: source channels by |score|, strongest first (rank = column + 1)
    scores: np.ndarray  # (U, N) float32: signed score, mean over the unit's rows
    shares: np.ndarray  # (U, N) float32: score / total
    total: np.ndarray  # (U,) float32: sum over all source channels of |score|
    values: np.ndarray  # (U,) float32: the unit's mean value at its peaks
    images: np.ndarray  # (U,) int64: the unit's rows (its top images) averaged over
    layer: str
    source: str
    forward_passes: int
    backward_passes: int

    def table(self) -> list[dict]:
        """One dict per (unit, rank): unit, rank (1 = strongest), channel, score, share."""
        return [
            {"unit": int(unit), "rank": rank + 1, "channel": int(self.channels[i, rank]),
             "score": float(self.scores[i, rank]), "share": float(self.shares[i, rank])}
            for i, unit in enumerate(self.units) for rank in range(self.channels.shape[1])
        ]  # fmt: skip


def contributions(
    model: torch.nn.Module,
    layer: str,
    source: str,
    images: torch.Tensor | np.ndarray,
    targets: Targets,
    top: int = DEFAULT_TOP,
    batch_size: int = DEFAULT_BATCH,
) -> Contributions:
    """Each unit's `top` strongest channels of `source` (a layer below `layer`) over the unit's rows."""
    import torch

    if top < 1:
        raise InvalidInputError(f"top must be at least 1, got {top}")
    modules = find_module(model, layer), find_module(model, source)
    check_eval(model)
    images = torch.as_tensor(images)
    targets.check_images(len(images))
    row_scores = None  # (R, C) float64
    values = np.zeros(len(targets), np.float64)
    batches = plan_batches(targets.image, batch_size)
    with frozen(model):
        for batch in batches:
            slots = _batch_scores(model, modules, (layer, source), images, targets, batch, values)
            for rows, scores in slots:
                row_scores = np.zeros((len(targets), scores.shape[1])) if row_scores is None else row_scores
                row_scores[rows] = scores
    if row_scores is None:
        raise InvalidInputError("no targets: contributions need at least one row")
    passes = sum(len(batch.slots) for batch in batches)
    return _ranked(targets, row_scores, values, top, (layer, source), len(batches), passes)


def _batch_scores(model, modules, names, images, targets: Targets, batch: Batch, values) -> list[tuple]:
    """[(rows, (n, C) scores)] per slot of the batch: one forward, one backward per slot."""
    import torch

    (module, source_module), (layer, source) = modules, names
    x = as_model_input(images[torch.as_tensor(batch.images)], model)
    leaf = _Leaf()
    with LayerCapture(source_module, stop=False, replace=leaf), LayerCapture(module) as capture:
        model(x)
    if capture.output is None or leaf.value is None:
        missing = layer if capture.output is None else source
        raise InvalidInputError(
            f"layer {missing!r} was not reached before {layer!r} ended the forward: "
            f"is {source!r} below {layer!r}?"
        )
    out, act = capture.output, leaf.value
    targets.check(out.shape, layer)
    scores = []
    for slot, (rows, pos) in enumerate(batch.slots):
        where = (pos, targets.unit[rows], targets.y[rows], targets.x[rows])
        keep = slot + 1 < len(batch.slots)  # the graph serves the batch's next slot
        (grad,) = torch.autograd.grad(out, act, one_hot(out, *where), retain_graph=keep)
        index = torch.as_tensor(pos)
        product = act.detach()[index].double() * grad[index].double()
        scores.append((rows, product.flatten(2).sum(dim=2).numpy() if product.dim() > 2 else product.numpy()))
        values[rows] = peak_values(out, *where).numpy()
    return scores


class _Leaf:
    """Replaces the source's output by a leaf that needs a gradient (and a copy of it, for in-place ops
    after the source, such as resnet's `out += identity`): the graph starts there."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.value = output.detach().requires_grad_(True)
        return self.value.clone()


def _ranked(targets: Targets, row_scores, values, top: int, names, forwards: int, backwards: int):
    """Mean scores per unit, and their `top` channels by |score|."""
    units, first, inverse, counts = np.unique(
        targets.unit, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.argsort(first)  # units in the order the rows first name them
    sums = np.zeros((len(units), row_scores.shape[1]))
    np.add.at(sums, inverse.reshape(-1), row_scores)
    means = (sums / counts[:, None])[order]
    mean_values = (np.bincount(inverse.reshape(-1), weights=values) / counts)[order]
    n = min(top, means.shape[1])
    channels = np.argsort(-np.abs(means), axis=1, kind="stable")[:, :n]
    scores = np.take_along_axis(means, channels, axis=1)
    total = np.abs(means).sum(axis=1)
    shares = np.divide(scores, total[:, None], out=np.zeros_like(scores), where=total[:, None] > 0)
    return Contributions(
        units[order], channels, scores.astype(np.float32), shares.astype(np.float32),
        total.astype(np.float32), mean_values.astype(np.float32), counts[order], *names, forwards, backwards,
    )  # fmt: skip
