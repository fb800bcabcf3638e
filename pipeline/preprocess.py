"""Preprocessing (resize shorter side, center crop, normalize) and its inverse geometry.

    prep = Preprocessing(resize=256, crop=224, interpolation="bilinear")
    prep.to_original(np.array([[0, 0, 224, 224]]), widths=np.array([500]), heights=np.array([375]))

The decoder applies resize + crop on the CPU and ships uint8 pixels; the recorder normalizes them on its
device. `to_original` maps boxes in model-input pixels back to the original (EXIF-upright) image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """How an original image becomes a model input."""

    resize: int = 256  # shorter side after resizing, in pixels (torchvision Resize(int) semantics)
    crop: int = 224  # side of the square center crop taken from the resized image
    interpolation: str = "bilinear"  # PIL resampling filter used for the resize
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel mean on [0, 1] pixels
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # per-channel std on [0, 1] pixels

    def __post_init__(self) -> None:
        if self.crop < 1 or self.resize < 1:
            raise ValueError(f"resize ({self.resize}) and crop ({self.crop}) must be positive")
        if self.crop > self.resize:
            raise ValueError(
                f"crop ({self.crop}) must not exceed resize ({self.resize}): nothing to crop from"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std positive (got {self.mean}, {self.std})")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shorter side is resized to `resize`, as torchvision computes it."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def crop_origin(self, resized_width: int, resized_height: int) -> tuple[int, int]:
        """(left, top) of the center crop inside the resized image, rounded as torchvision does."""
        return int(round((resized_width - self.crop) / 2.0)), int(round((resized_height - self.crop) / 2.0))

    def to_original(self, boxes: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Map (N, 4) boxes (x0, y0, x1, y1; exclusive ends) in model-input pixels to original pixels.

        The box is first clipped to the crop (the network saw nothing outside it), then shifted by the crop
        origin and scaled by the resize factor; ends round outwards so the box covers every pixel it touches.
        """
        out = np.empty((len(boxes), 4), dtype=np.int32)
        for i, (box, w, h) in enumerate(zip(boxes, widths, heights, strict=True)):
            out[i] = self._box_to_original(box, int(w), int(h))
        return out

    def _box_to_original(self, box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
        rw, rh = self.resized_size(width, height)
        left, top = self.crop_origin(rw, rh)
        x0, y0, x1, y1 = (min(max(int(v), 0), self.crop) for v in box)
        sx, sy = width / rw, height / rh
        return (
            max(0, math.floor((x0 + left) * sx)),
            max(0, math.floor((y0 + top) * sy)),
            min(width, math.ceil((x1 + left) * sx)),
            min(height, math.ceil((y1 + top) * sy)),
        )
