"""Which unit to explain on which image, and at which position; and how rows are batched into passes.

    targets = Targets(image=[0, 1, 1], unit=[7, 7, 3], y=[2, 0, 5], x=[1, 4, 5])  # the index's top-k rows
    targets = Targets.from_positions(image=[0, 1], unit=[7, 7], pos=[9, 4], width=4)  # pos = y * W + x
    for batch in plan_batches(targets.image, batch_size=32):
        batch.images            # the distinct images of one forward pass (indices into the caller's batch)
        batch.slots             # per backward pass: (rows of `targets`, their image's position in the pass)

A row is one (unit, image) pair, at the position where the recorder found the unit's maximum on that image.

Batching. The images of all rows are forwarded once each, `batch_size` distinct images per forward pass;
each backward pass then serves one row per image of that pass (its "slot"), so a pass explains up to
`batch_size` rows of any units at once. An image that is the top image of several units gets one slot per
unit: its forward is shared, and the graph is kept for the extra backward passes. Images with the most rows
are batched together (sorted by row count), so that slots of images with fewer rows, which still cost a
backward over the whole pass, are rare. Units whose top images are all distinct therefore take
ceil(rows / batch_size) backward passes; units that share their k images take one pass per unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from actindex.pipeline.errors import InvalidInputError

IntArray = np.ndarray | Sequence[int]


@dataclass(frozen=True)
class Targets:
    """One row per (unit, image): explain `unit`'s value at (y, x) of the layer's map on image `image`."""

    image: np.ndarray  # (R,) int64: index into the batch of images passed alongside
    unit: np.ndarray  # (R,) int64: channel of the layer
    y: np.ndarray  # (R,) int64: row of the peak in the layer's feature map (0 for (B, C) layers)
    x: np.ndarray  # (R,) int64: column of the peak

    def __post_init__(self) -> None:
        for name in ("image", "unit", "y", "x"):
            value = np.asarray(getattr(self, name))
            if value.ndim != 1 or (value.size and not np.issubdtype(value.dtype, np.integer)):
                raise InvalidInputError(f"targets.{name} must be a 1-D array of integers, got {value!r}")
            object.__setattr__(self, name, value.astype(np.int64))
        lengths = {len(getattr(self, name)) for name in ("image", "unit", "y", "x")}
        if len(lengths) != 1:
            raise InvalidInputError(f"targets image, unit, y and x differ in length ({sorted(lengths)})")
        if len(self) and min(int(getattr(self, name).min()) for name in ("image", "unit", "y", "x")) < 0:
            raise InvalidInputError("targets hold a negative image, unit or position")

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def from_positions(cls, image: IntArray, unit: IntArray, pos: IntArray, width: int) -> Targets:
        """From the recorder's flat peak positions pos = y * width + x (width: the layer map's width)."""
        pos = np.asarray(pos, dtype=np.int64)
        return cls(image=image, unit=unit, y=pos // width, x=pos % width)

    def check_images(self, count: int) -> None:
        """Refuse rows naming an image beyond a batch of `count` images."""
        if len(self) and self.image.max() >= count:
            raise InvalidInputError(
                f"targets name image {self.image.max()}, but only {count} images are here"
            )

    def check(self, shape: Sequence[int], layer: str) -> None:
        """Refuse rows outside a layer output of `shape` ((B, C, H, W) or (B, C))."""
        if not len(self):
            return
        height, width = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
        problems = [
            f"unit {self.unit.max()} >= {shape[1]} channels" if self.unit.max() >= shape[1] else "",
            f"y {self.y.max()} >= height {height}" if self.y.max() >= height else "",
            f"x {self.x.max()} >= width {width}" if self.x.max() >= width else "",
        ]
        problems = [problem for problem in problems if problem]
        if problems:
            raise InvalidInputError(
                f"targets do not fit layer {layer!r} (output {tuple(shape)[1:]}): {'; '.join(problems)}"
            )


@dataclass(frozen=True)
class Batch:
    """One forward pass over distinct images, and the backward passes (slots) that share it."""

    images: np.ndarray  # (D,) distinct image indices, in the order they are stacked for the pass
    slots: list[tuple[np.ndarray, np.ndarray]]  # per backward pass: (rows, index of their image in `images`)


def plan_batches(image: IntArray, batch_size: int) -> list[Batch]:
    """Forward passes of at most `batch_size` distinct images; each image's rows go to successive slots."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    image = np.asarray(image, dtype=np.int64)
    ids, first, counts = np.unique(image, return_index=True, return_counts=True)
    by_image = np.split(np.argsort(image, kind="stable"), np.cumsum(counts)[:-1]) if len(image) else []
    order = np.lexsort((first, -counts))  # most rows first; ties in the order the rows name them
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        slots = []
        for slot in range(int(counts[chunk].max())):
            present = [i for i, j in enumerate(chunk) if counts[j] > slot]
            rows = np.array([by_image[chunk[i]][slot] for i in present], dtype=np.int64)
            slots.append((rows, np.array(present, dtype=np.int64)))
        batches.append(Batch(ids[chunk], slots))
    return batches
