"""Decode image files into model-ready uint8 pixels, recording failures instead of raising.

    decoder = Decoder(Preprocessing(resize=256, crop=224))
    image = decoder("photos/cat.jpg")   # DecodedImage(pixels=(3, 224, 224) uint8, width, height, error)
    batch = decoder.decode_batch({"uri": np.array(["a.jpg", "b.png"])})

EXIF orientation is applied, the first frame of animations is used, and grayscale, palette, CMYK, 16-bit
and alpha images become RGB (transparent pixels are composited on white). `width`/`height` are those of the
upright original, the frame that boxes are expressed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.preprocess import Preprocessing

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb threshold (2x MAX_IMAGE_PIXELS)
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class DecodedImage:
    pixels: np.ndarray | None  # (3, crop, crop) uint8, None when decoding failed
    width: int  # upright original width (0 if unknown)
    height: int  # upright original height (0 if unknown)
    error: str | None  # short reason when decoding failed


class Decoder:
    """A stage: file path -> DecodedImage. Constructed once per worker, called per image or batch."""

    def __init__(self, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        # The decoder enforces max_pixels itself, from the header, before any pixel is decoded; Pillow's own
        # process-wide limit would otherwise cap it at its default.
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = None

    def __call__(self, uri: str) -> DecodedImage:
        width = height = 0
        try:
            with Image.open(uri) as img:
                width, height = _upright_size(img)
                if width * height > self.max_pixels:
                    raise _TooLarge(f"too large: {width}x{height} exceeds {self.max_pixels} pixels")
                rgb = to_rgb(ImageOps.exif_transpose(img))
            return DecodedImage(self._preprocess(rgb), rgb.width, rgb.height, None)
        except Exception as exc:  # noqa: BLE001 - any decoder failure becomes an error row, never a crash
            return DecodedImage(None, width, height, describe_error(exc))

    def decode_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data / plain-loop form: adds pixels, ok, width, height and error columns to a batch."""
        decoded = [self(str(uri)) for uri in batch["uri"]]
        crop = self.preprocessing.crop
        blank = np.zeros((3, crop, crop), dtype=np.uint8)
        out = dict(batch)
        out["pixels"] = np.stack([d.pixels if d.pixels is not None else blank for d in decoded])
        out["ok"] = np.array([d.error is None for d in decoded])
        out["width"] = np.array([d.width for d in decoded], dtype=np.int32)
        out["height"] = np.array([d.height for d in decoded], dtype=np.int32)
        out["error"] = np.array([d.error or "" for d in decoded], dtype=object)
        return out

    def _preprocess(self, img: Image.Image) -> np.ndarray:
        prep = self.preprocessing
        new_w, new_h = prep.resized_size(img.width, img.height)
        img = img.resize((new_w, new_h), resample=_RESAMPLE[prep.interpolation])
        left, top = prep.crop_origin(new_w, new_h)
        img = img.crop((left, top, left + prep.crop, top + prep.crop))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


class _TooLarge(ValueError):
    pass


def _upright_size(img: Image.Image) -> tuple[int, int]:
    orientation = img.getexif().get(0x0112, 1)
    return (img.height, img.width) if orientation in (5, 6, 7, 8) else (img.width, img.height)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of any PIL image: first frame, 16-bit/float scaled to 8 bits, alpha over white."""
    img.seek(0)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 1.0)
        img = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def describe_error(exc: BaseException) -> str:
    """A short, user-facing reason for a decode failure."""
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, _TooLarge):
        return message
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large: {message}"
    if isinstance(exc, FileNotFoundError):
        return "unreadable: file not found"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if "cannot identify image file" in message:
        return "not an image: unrecognised format"
    if "truncated" in message.lower() or "image file is truncated" in message:
        return f"truncated: {message}"
    return f"{type(exc).__name__}: {message}"[:300]
