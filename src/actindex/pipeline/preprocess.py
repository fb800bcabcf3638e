"""Preprocessing (resize shorter side, center crop, normalize) and its inverse geometry.

    prep = Preprocessing(resize=256, crop=224, interpolation="bilinear")
    prep.to_original(np.array([[0, 0, 224, 224]]), widths=np.array([500]), heights=np.array([375]))

The decoder applies resize + crop on the CPU and ships uint8 pixels; the recorder normalizes them on its
device. `to_original` maps boxes in model-input pixels back to the original image, in the frame the decoder
worked in: EXIF-upright with `decode="fast"`, the stored pixels with `decode="torchvision"`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.options import Option, check, three_floats


class Interpolation(str, Enum):
    """Resize filters (Pillow's, and the device path's equivalents)."""

    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"
    lanczos = "lanczos"


class Decode(str, Enum):
    """How a file becomes RGB pixels before the resize (pipeline.decode explains both)."""

    fast = "fast"  # EXIF orientation applied, large JPEGs drafted in the DCT, alpha over white
    torchvision = "torchvision"  # full decode, EXIF ignored: Image.open(path).convert("RGB"), as torchvision


DECODES = tuple(item.value for item in Decode)


@dataclass(frozen=True)
class Preprocessing:
    """How an original image becomes a model input."""

    # each field is also an option of `actindex index` (pipeline.options): there it replaces the model's own
    resize: int = Option("Override: shorter side after resize.").field(256)
    crop: int = Option("Override: center-crop size (model input).").field(224)
    interpolation: str = Option("Override: the resize filter.", choices=Interpolation).field("bilinear")
    mean: tuple[float, float, float] = Option(  # on [0, 1] pixels
        "Override: per-channel mean, e.g. 0.5,0.5,0.5.", parse=three_floats
    ).field((0.485, 0.456, 0.406))
    std: tuple[float, float, float] = Option(
        "Override: per-channel std.",
        parse=three_floats,
    ).field((0.229, 0.224, 0.225))
    decode: str = Option(  # how the file becomes RGB before the resize (pipeline.decode)
        "fast (default): EXIF orientation applied, large JPEGs decoded at reduced scale; torchvision: "
        "exactly torchvision's pixels (full decode, EXIF ignored; CPU decoding only).",
        choices=Decode,
    ).field("fast")

    def __post_init__(self) -> None:
        check(self)  # the choices' members are kept as their text (run.json's form)
        for name in ("interpolation", "decode"):
            object.__setattr__(self, name, getattr(self, name).value)
        if self.crop < 1 or self.resize < 1:
            raise InvalidInputError(f"resize ({self.resize}) and crop ({self.crop}) must be positive")
        if self.crop > self.resize:
            raise InvalidInputError(
                f"crop ({self.crop}) must not exceed resize ({self.resize}): nothing to crop from"
            )
        if min(self.std) <= 0:
            raise InvalidInputError(
                f"mean and std need 3 values each, std positive (got {self.mean}, {self.std})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """The inverse of to_dict; a dict without "decode" (indexes made before it existed) is "fast"."""
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
        Vectorized, with the same float64 operations as `resized_size` and `crop_origin` (numpy rounds
        halves to even like Python's round), so every box equals the scalar computation's.
        """
        boxes = np.clip(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), 0, self.crop)
        width = np.asarray(widths, dtype=np.int64)
        height = np.asarray(heights, dtype=np.int64)
        wide = width > height
        rw = np.where(wide, (self.resize * width / np.maximum(height, 1)).astype(np.int64), self.resize)
        rh = np.where(wide, self.resize, (self.resize * height / np.maximum(width, 1)).astype(np.int64))
        left = np.round((rw - self.crop) / 2.0).astype(np.int64)
        top = np.round((rh - self.crop) / 2.0).astype(np.int64)
        # (p * width) / rw: an integer product divided once, so a quotient that is a whole number is
        # exactly that number (p * (width / rw) could be 125.00000000000001 and round out to 126)
        out = np.empty((len(boxes), 4), dtype=np.int32)
        out[:, 0] = np.maximum(0, np.floor((boxes[:, 0] + left) * width / rw))
        out[:, 1] = np.maximum(0, np.floor((boxes[:, 1] + top) * height / rh))
        out[:, 2] = np.minimum(width, np.ceil((boxes[:, 2] + left) * width / rw))
        out[:, 3] = np.minimum(height, np.ceil((boxes[:, 3] + top) * height / rh))
        return out
