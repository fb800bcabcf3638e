"""Synthetic ImageNet-like photos for benchmarks: smooth colour fields, shapes, texture and sensor noise.

    img = synthetic_photo(seed=3)                 # 500x375 PIL image, natural-looking rather than noise
    data = synthetic_jpeg(seed=3, quality=90)     # the same as JPEG bytes (about ImageNet's sizes)

Deterministic per seed, so two runs of a benchmark read the same dataset.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def natural_image(rng: np.random.Generator, width: int, height: int):
    """A natural-looking RGB image: a smooth random colour field, some shapes, some sensor noise."""
    cells = rng.integers(3, 9)
    field = rng.integers(0, 256, (cells, max(2, cells * width // height), 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x1, y1], fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    # fine luminance texture (foliage, fabric, ...) and sensor noise: JPEG sizes like ImageNet's
    cell = int(rng.integers(2, 5))
    grain = rng.normal(0.0, rng.uniform(20, 50), (height // cell + 1, width // cell + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(grain).resize((width, height), Image.Resampling.BICUBIC))
    noise = rng.normal(0.0, rng.uniform(4, 10), (height, width, 3))
    pixels = np.asarray(img, dtype=np.float32) + texture[:, :, None] + noise
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def encode_jpeg(img: Image.Image, quality: int = 90, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, **options)
    return out.getvalue()


def synthetic_photo(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    return natural_image(np.random.default_rng(seed), width, height)


def synthetic_jpeg(seed: int, width: int = 500, height: int = 375, quality: int = 90) -> bytes:
    return encode_jpeg(synthetic_photo(seed, width, height), quality)
