"""Synthetic ImageNet-like photos for benchmarks: smooth colour fields, shapes, edges and grain.

    img = synthetic_photo(seed=3)                 # 500x375 PIL image, natural-looking rather than noise
    data = synthetic_jpeg(seed=3, quality=90)     # the same as JPEG bytes

Deterministic per seed, so two runs of a benchmark read the same dataset.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_photo(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.random((max(2, height // 48), max(2, width // 48), 3)) * 255
    img = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def synthetic_jpeg(seed: int, width: int = 500, height: int = 375, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    synthetic_photo(seed, width, height).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
