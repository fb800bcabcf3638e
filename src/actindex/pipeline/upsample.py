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

The two matrix products are cut into blocks of at most SINGLE_THREAD_PRODUCT multiply-adds: OpenBLAS
computes a product that small on the calling thread, each element the same way as in one big product, while
a bigger one wakes its own threads, which fight torch's and the report's drawing threads for the cores
(measured on 2 busy cores: 15-30 ms a crop instead of 1-2 ms).
"""

from __future__ import annotations

import functools

import numpy as np

from actindex.pipeline.geometry import ReceptiveField
from actindex.pipeline.preprocess import Preprocessing

SINGLE_THREAD_PRODUCT = 1 << 18  # OpenBLAS's default threshold for threads in a matrix product (m*n*k)
PLACEMENTS_KEPT = 256  # interpolation weights kept for the next map of the same image, box and layer


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
    box = (0, 0, width, height) if box is None else tuple(int(v) for v in box)
    place = _placement(rf, prep, width, height, box, fmap.shape)
    out = np.full((box[3] - box[1], box[2] - box[0]), np.nan, dtype=np.float32)
    if place is not None:
        rows, columns, (y0, y1, x0, x1) = place
        out[y0:y1, x0:x1] = _product(_product(rows, fmap), columns)
    return out


@functools.lru_cache(maxsize=PLACEMENTS_KEPT)
def _placement(
    rf: ReceptiveField, prep: Preprocessing, width: int, height: int, box: tuple, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None:
    """(rows, columns, where): the interpolation weights that lay an (h, w) map over the seen part of `box`,
    `rows @ fmap @ columns`, and where that part lies in the box (y0, y1, x0, x1); None if the model saw
    none of it. Every unit's map of one image and box uses the same weights (a global layer's box is the
    whole photo for every unit): they are computed once for all."""
    bx0, by0, bx1, by1 = box
    sx0, sy0, sx1, sy1 = seen_box(prep, width, height)
    x0, y0, x1, y1 = max(bx0, sx0), max(by0, sy0), min(bx1, sx1), min(by1, sy1)
    if x0 >= x1 or y0 >= y1:
        return None
    resized_w, resized_h = prep.resized_size(width, height)
    left, top = prep.crop_origin(resized_w, resized_h)
    ys = feature_coords(_input_coords(y0, y1, height, resized_h, top), shape[0], rf, "y", prep.crop)
    xs = feature_coords(_input_coords(x0, x1, width, resized_w, left), shape[1], rf, "x", prep.crop)
    rows, columns = _bilinear(ys, shape[0]), _bilinear(xs, shape[1]).T
    rows.flags.writeable = columns.flags.writeable = False  # shared by every call with this placement
    return rows, columns, (y0 - by0, y1 - by0, x0 - bx0, x1 - bx0)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b, in blocks of rows of a that BLAS computes on the calling thread (the module docstring)."""
    rows = max(1, SINGLE_THREAD_PRODUCT // max(1, a.shape[1] * b.shape[1]))
    if a.shape[0] <= rows:
        return a @ b
    return np.concatenate([a[start : start + rows] @ b for start in range(0, a.shape[0], rows)])


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
    matrix[rows, low] += 1 - (u - low)  # each (row, column) once per statement: both add, as np.add.at
    matrix[rows, high] += u - low
    return matrix
