"""A feature map laid over the original image: every original pixel gets the map's value where it lies.

    values = to_original(fmap, rf, prep, width=600, height=400)   # (400, 600) float32, NaN off the crop
    tile = to_original(fmap, rf, prep, 600, 400, box=(120, 30, 320, 230))   # those pixels only (200, 200)
    seen = seen_box(prep, 600, 400)                               # (x0, y0, x1, y1): what the model saw

Each feature position sits at the centre of its receptive field in model-input pixels (`rf.start +
i * rf.jump + (rf.size - 1) / 2`, the same geometry as the index's boxes); a layer whose positions all
see the whole input (rf.is_global: squeeze-and-excitation products, say) has no such centres, and its
positions are spread evenly over the input instead (cell i centred at (i + 0.5) * crop / n, as
`F.interpolate(align_corners=False)` places them). An original pixel is taken through the inverse of the
preprocessing (the resize scale and the crop origin, from `Preprocessing`), its centre becomes a
fractional feature position, and the value is interpolated bilinearly between the nearest positions
(clamped at the map's edges). The result is the upsampling to model-input pixels and the inverse
resize/crop in one separable linear map, evaluated straight at original resolution. Pixels the
network never saw (outside the centre crop) are NaN.
"""

from __future__ import annotations

import numpy as np

from actindex.pipeline.geometry import ReceptiveField
from actindex.pipeline.preprocess import Preprocessing


def seen_box(prep: Preprocessing, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop in original pixels (x0, y0, x1, y1; exclusive ends), rounded outwards like the index's
    boxes: the box of a global layer's top image."""
    box = prep.to_original(np.array([[0, 0, prep.crop, prep.crop]]), np.array([width]), np.array([height]))
    return tuple(int(v) for v in box[0])


def to_original(
    fmap: np.ndarray,
    rf: ReceptiveField,
    prep: Preprocessing,
    width: int,
    height: int,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """The (h, w) map `fmap` over an original of width x height pixels: (height, width) float32, NaN off
    the crop; only the pixels of `box` (x0, y0, x1, y1; exclusive ends) when given."""
    fmap = np.asarray(fmap, dtype=np.float64)
    bx0, by0, bx1, by1 = box if box is not None else (0, 0, width, height)
    sx0, sy0, sx1, sy1 = seen_box(prep, width, height)
    x0, y0, x1, y1 = max(bx0, sx0), max(by0, sy0), min(bx1, sx1), min(by1, sy1)
    out = np.full((by1 - by0, bx1 - bx0), np.nan, dtype=np.float32)
    if x0 >= x1 or y0 >= y1:
        return out
    resized_w, resized_h = prep.resized_size(width, height)
    left, top = prep.crop_origin(resized_w, resized_h)
    ys = feature_coords(_input_coords(y0, y1, height, resized_h, top), fmap.shape[0], rf, "y", prep.crop)
    xs = feature_coords(_input_coords(x0, x1, width, resized_w, left), fmap.shape[1], rf, "x", prep.crop)
    out[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] = (
        _bilinear(ys, fmap.shape[0]) @ fmap @ _bilinear(xs, fmap.shape[1]).T
    )
    return out


def _input_coords(first: int, end: int, size: int, resized: int, offset: int) -> np.ndarray:
    """Model-input coordinates (pixel centres at integers) of original pixels first..end-1 along an axis:
    the centre of pixel p is p + 0.5 in continuous coordinates, scaled by resized / size (the resize maps
    the original's whole extent onto the resized image, as Pillow's does), less the crop offset."""
    return (np.arange(first, end) + 0.5) * resized / size - 0.5 - offset


def feature_coords(coords: np.ndarray, n: int, rf: ReceptiveField, axis: str, crop: int) -> np.ndarray:
    """Fractional feature positions (0..n-1, clamped) of model-input coordinates along `axis` ("y", "x")."""
    if rf.is_global:  # no receptive-field centres: the n positions tile the input evenly
        jump, first = crop / n, crop / n / 2 - 0.5
    else:
        jump = getattr(rf, f"jump_{axis}")
        first = getattr(rf, f"start_{axis}") + (getattr(rf, f"size_{axis}") - 1) / 2
    return np.clip((coords - first) / jump, 0, n - 1)


def _bilinear(u: np.ndarray, n: int) -> np.ndarray:
    """(len(u), n) linear interpolation weights: position u takes from floor(u) and the one after."""
    low = np.floor(u).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    matrix = np.zeros((len(u), n))
    rows = np.arange(len(u))
    np.add.at(matrix, (rows, low), 1 - (u - low))
    np.add.at(matrix, (rows, high), u - low)
    return matrix
