"""Occlusion sensitivity: how much a unit's value at its recorded peak drops when a grey square hides part of
its receptive field.

    model = torchvision.models.alexnet().eval()
    images = torch.randn(2, 3, 96, 96)                                 # normalized model inputs
    targets = Targets(image=[0, 1], unit=[5, 5], y=[2, 1], x=[0, 3])   # the unit's top-k rows
    boxes = np.array([[0, 0, 96, 96], [10, 5, 90, 80]])                # receptive fields: x0, y0, x1, y1
    out = occlusion(model, "features.10", images, targets, boxes)
    out.maps[0].shape               # (96, 96): the mean drop of the windows covering each pixel of box 0
    out.drops[1], out.windows[1]    # each window's drop, and where it was (model-input pixels)

Grey is the preprocessing mean, which normalization maps to 0: the window's pixels are set to `fill` (0) in
the normalized input. The drop is value(unoccluded) - value(occluded) at the row's own (unit, y, x); positive
where the hidden pixels helped the unit. Boxes are in model-input pixels (pipeline.geometry's boxes, x1 and
y1 exclusive), clipped to the image: the map covers the clipped box, (y1 - y0, x1 - x0).

Windows. By default the window is a quarter of the clipped box's shorter side (at least 1 px) and the stride
half the window (at least 1 px), so each pixel is covered by about four windows and every box gets a map of
about 7 x 7 window positions whatever the layer; a last window is added flush with the box's end when the
stride does not land there, so every pixel is covered. Each pixel's value is the mean drop of the windows
covering it (as Captum's Occlusion averages).

Batching: rows on the same image with the same box (units peaking at the same position) share their occluded
copies; `batch_size` occluded copies (and unoccluded baselines) go through one forward pass, which stops at
the layer, without a graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.attribution.trace import as_model_input, check_eval, find_module, forward_to
from actindex.pipeline.errors import InvalidInputError

if TYPE_CHECKING:
    import torch


DEFAULT_BATCH = 16  # occluded copies per forward pass (8 and 25 as fast on ResNet-50 at 224 px, 50 slower)


@dataclass
class Occlusions:
    """Occlusion maps of the rows of `Targets`, in their order."""

    maps: list[
        np.ndarray
    ]  # per row, (h, w) float32 over its clipped box: mean drop of windows over each pixel
    boxes: np.ndarray  # (R, 4) int64: the clipped boxes (x0, y0, x1, y1), model-input pixels
    values: np.ndarray  # (R,) float32: the unit's value at its peak, unoccluded
    windows: list[np.ndarray]  # per row, (n, 4) int64: the occluding windows (x0, y0, x1, y1)
    drops: list[np.ndarray]  # per row, (n,) float32: value - value with that window occluded
    forward_passes: int


def default_window(height: int, width: int) -> tuple[int, int]:
    """(window, stride) for a box of height x width: a quarter of its shorter side, and half that."""
    window = max(1, math.ceil(min(height, width) / 4))
    return window, max(1, window // 2)


def window_boxes(box: tuple[int, int, int, int], window: int, stride: int) -> np.ndarray:
    """(n, 4) windows (x0, y0, x1, y1) of side `window` (at most the box's) every `stride` px over `box`."""
    x0, y0, x1, y1 = box
    ys = [y0 + start for start in _starts(y1 - y0, window, stride)]
    xs = [x0 + start for start in _starts(x1 - x0, window, stride)]
    wy, wx = min(window, y1 - y0), min(window, x1 - x0)
    return np.array([(x, y, x + wx, y + wy) for y in ys for x in xs], dtype=np.int64).reshape(-1, 4)


def _starts(length: int, window: int, stride: int) -> list[int]:
    last = max(0, length - window)
    starts = list(range(0, last + 1, stride))
    return starts if starts[-1] == last else [*starts, last]


def occlusion(
    model: torch.nn.Module,
    layer: str,
    images: torch.Tensor | np.ndarray,
    targets: Targets,
    boxes: np.ndarray,
    window: int | None = None,
    stride: int | None = None,
    fill: float = 0.0,
    batch_size: int = DEFAULT_BATCH,
) -> Occlusions:
    """Each row's occlusion map over its box; window/stride None: default_window of each clipped box."""
    import torch

    module = find_module(model, layer)
    check_eval(model)
    images = torch.as_tensor(images)
    targets.check_images(len(images))
    boxes = _clipped(boxes, len(targets), images.shape[2], images.shape[3])
    groups = _groups(targets, boxes)
    windows = [_windows(boxes[rows[0]], window, stride) for rows in groups]
    jobs = [(g, w) for g, group_windows in enumerate(windows) for w in range(-1, len(group_windows))]
    values = [np.zeros((len(w) + 1, len(rows)), np.float32) for w, rows in zip(windows, groups, strict=True)]
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            x = _occluded(images, targets, groups, windows, chunk, fill)
            out = forward_to(model, module, layer, as_model_input(x, model))
            targets.check(out.shape, layer)
            for j, (g, w) in enumerate(chunk):
                rows = groups[g]
                values[g][w + 1] = _read(out, j, targets, rows)
    return _result(targets, boxes, groups, windows, values, math.ceil(len(jobs) / batch_size))


def _clipped(boxes: np.ndarray, rows: int, height: int, width: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.shape != (rows, 4):
        raise InvalidInputError(f"boxes must be ({rows}, 4) (x0, y0, x1, y1), one per row; got {boxes.shape}")
    clipped = np.clip(boxes, 0, [width, height, width, height])
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        box = boxes[np.argmax(empty)].tolist()
        raise InvalidInputError(f"box {box} lies outside the {width}x{height} input")
    return clipped


def _groups(targets: Targets, boxes: np.ndarray) -> list[np.ndarray]:
    """Rows by (image, box): they share occluded copies."""
    keys = np.concatenate([targets.image[:, None], boxes], axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)] if len(keys) else []


def _windows(box: np.ndarray, window: int | None, stride: int | None) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    window = default_window(y1 - y0, x1 - x0)[0] if window is None else window
    stride = max(1, window // 2) if stride is None else stride
    if window < 1 or stride < 1:
        raise InvalidInputError(f"window ({window}) and stride ({stride}) must be at least 1 px")
    return window_boxes((x0, y0, x1, y1), window, stride)


def _occluded(images, targets, groups, windows, chunk, fill: float) -> torch.Tensor:
    """The chunk's inputs: each job's image with its window (none for w = -1, the baseline) set to fill."""
    import torch

    index = torch.as_tensor([int(targets.image[groups[g][0]]) for g, _ in chunk])
    x = images[index].to(torch.float32, copy=True)
    for j, (g, w) in enumerate(chunk):
        if w >= 0:
            x0, y0, x1, y1 = (int(v) for v in windows[g][w])
            x[j, :, y0:y1, x0:x1] = fill
    return x


def _read(out: torch.Tensor, j: int, targets: Targets, rows: np.ndarray) -> np.ndarray:
    if out.dim() == 2:
        return out[j, targets.unit[rows]].float().numpy()
    return out[j, targets.unit[rows], targets.y[rows], targets.x[rows]].float().numpy()


def _result(targets, boxes, groups, windows, values, passes: int) -> Occlusions:
    maps: list = [None] * len(targets)
    drops: list = [None] * len(targets)
    row_windows: list = [None] * len(targets)
    base = np.zeros(len(targets), np.float32)
    for rows, group_windows, group_values in zip(groups, windows, values, strict=True):
        for i, row in enumerate(rows):
            base[row] = group_values[0, i]
            drops[row] = group_values[0, i] - group_values[1:, i]
            row_windows[row] = group_windows
            maps[row] = _mean_map(boxes[row], group_windows, drops[row])
    return Occlusions(maps, boxes, base, row_windows, drops, passes)


def _mean_map(box: np.ndarray, windows: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """Per pixel of `box`, the mean drop of the windows that cover it."""
    x0, y0, x1, y1 = (int(v) for v in box)
    total = np.zeros((y1 - y0, x1 - x0), np.float64)
    count = np.zeros_like(total)
    for (wx0, wy0, wx1, wy1), drop in zip(windows, drops, strict=True):
        total[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0] += drop
        count[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0] += 1
    return (total / count).astype(np.float32)
