"""What a layer's output looks like and which input pixels each position sees: plain records, no torch.

    info = LayerInfo("layer4", "Sequential", channels=512, height=7, width=7)
    rf = ReceptiveField(435, 435, 32, 32, -213, -213, is_global=False)
    boxes(rf, y=np.array([3]), x=np.array([3]))    # [[-117, -117, 318, 318]] in model-input pixels

pipeline.layers and pipeline.receptive_field compute them from a model; the workers, the topk merge and
the readers only need the records, so they import this module and never torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerInfo:
    name: str  # named_modules() path
    type: str  # module class name
    channels: int  # number of units
    height: int  # feature-map height (1 for (B, C) outputs)
    width: int  # feature-map width (1 for (B, C) outputs)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one layer's feature positions in model-input pixels (inclusive bounds)."""

    size_y: int  # end - start + 1
    size_x: int
    jump_y: int  # stride between neighbouring feature positions
    jump_x: int
    start_y: int  # first input pixel covered by feature position 0 (may be < 0: padding)
    start_x: int
    is_global: bool  # every position sees the whole input (e.g. (B, C) outputs)
    # scaled by a gate computed from the whole image (squeeze-excitation), treated as a constant for boxes
    global_context: bool = False

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in model-input pixels, x1/y1 exclusive, NOT clipped."""
        if self.is_global:
            return (0, 0, self.size_x, self.size_y)
        y0 = self.start_y + y * self.jump_y
        x0 = self.start_x + x * self.jump_x
        return (x0, y0, x0 + self.size_x, y0 + self.size_y)

    def clipped_box(self, y: int, x: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Like ``box`` but clipped to an image of ``height`` x ``width`` pixels."""
        x0, y0, x1, y1 = self.box(y, x)
        return (_clip(x0, width), _clip(y0, height), _clip(x1, width), _clip(y1, height))


def boxes(rf: ReceptiveField, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Vectorised ``rf.box``: int64 array of shape (N, 4) with rows (x0, y0, x1, y1), unclipped."""
    y, x = np.broadcast_arrays(np.asarray(y, dtype=np.int64), np.asarray(x, dtype=np.int64))
    y, x = y.reshape(-1), x.reshape(-1)
    if rf.is_global:
        return np.tile(np.array([0, 0, rf.size_x, rf.size_y], dtype=np.int64), (len(y), 1))
    y0 = rf.start_y + y * rf.jump_y
    x0 = rf.start_x + x * rf.jump_x
    return np.stack([x0, y0, x0 + rf.size_x, y0 + rf.size_y], axis=1)


def _clip(value: int, limit: int) -> int:
    return min(max(value, 0), limit)


def from_layers_row(row: dict) -> tuple[LayerInfo, ReceptiveField]:
    """A row of the index's `layers` table (pipeline.schema.LAYERS) as the records it was written from."""
    info = LayerInfo(row["layer"], row["type"], row["channels"], row["height"], row["width"])
    rf = ReceptiveField(
        row["rf_size_y"], row["rf_size_x"], row["rf_jump_y"], row["rf_jump_x"],
        row["rf_start_y"], row["rf_start_x"], row["rf_global"],
        bool(row.get("rf_global_context")),  # indexes made before the column existed: no gates seen
    )  # fmt: skip
    return info, rf
