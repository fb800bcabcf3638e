"""Why a unit fires on its top images: pixel projections and occlusion maps, over the boxes `actindex top`
gives, in original-image pixels.

    rows = unit_tops("idx/", "layer4", [17], k=9).rows
    found = unit_explanations("idx/", rows, "projection", method="deconvnet")
    found.maps[0]                                        # rank 1: (h, w, 3) float32 over its box
    pictures = explained_pictures(rows, found.maps, "projection", tile=96)  # Zeiler & Fergus's grey images

Projections (pipeline.attribution.projection): the unit's value at its recorded peak carried back to the
input pixels under deconvnet's, guided backpropagation's or the plain gradient's rules. Occlusion
(pipeline.attribution.occlusion): a grey square (the index's preprocessing mean, so the model sees zeros)
slides over the unit's receptive-field box, by default a quarter of the box's shorter side every eighth;
the map is the drop of the unit's value at its peak, each pixel the mean drop of the windows covering it.

The model is the index's, with its recorded weights (pipeline.models.index_model: weights changed since
indexing are refused in one line); each image is decoded the index's way, once, and the units of a layer
share one call (rows of many units in each backward pass). Each map is computed in model-input pixels and
laid over the row's box in original pixels (pipeline.upsample.to_original, with a pixel's own receptive
field): exactly the box of `Index.top` for that rank, NaN where the model saw nothing (off the centre crop).

Drawn as Zeiler & Fergus showed them: a projection as a grey image, 128 where nothing flows and the largest
|value| of the map at 0 or 255 per channel; an occlusion map as a heat map (jet) over the crop, the unit's
value at its peak at the top of the scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from actindex.pipeline.attribution.occlusion import occlusion
from actindex.pipeline.attribution.projection import project
from actindex.pipeline.attribution.rules import Method
from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.geometry import ReceptiveField, boxes
from actindex.pipeline.models import index_model
from actindex.pipeline.options import Option, comma_list
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.upsample import to_original
from actindex.queries.db import connect, index_params, layer_geometry
from actindex.queries.grid import fit_crop, open_crop
from actindex.queries.masks import decode_rows, heat

if TYPE_CHECKING:
    import pyarrow as pa
    import torch


class Show(str, Enum):
    """What a tile shows of a top image."""

    crop = "crop"  # the receptive-field crop
    projection = "projection"  # the unit's value projected back to the crop's pixels (METHOD)
    occlusion = "occlusion"  # how much hiding each part of the crop lowers the unit (costly)


def shows(value: str | Show | Sequence[str | Show]) -> tuple[Show, ...]:
    """'projection,crop' (or a Show, or a sequence of them) -> (Show.projection, Show.crop)."""
    parts = comma_list(value) if isinstance(value, str) else [value] if isinstance(value, Show) else value
    found = []
    for part in parts:
        try:
            found.append(Show(part))
        except ValueError:
            names = ", ".join(item.value for item in Show)
            raise InvalidInputError(f"{getattr(part, 'value', part)!r} is not one of {names}") from None
    if not found or len(set(found)) < len(found):
        raise InvalidInputError(f"{value!r}: name each of crop, projection, occlusion at most once")
    return tuple(found)


SHOW = Option(
    "What each tile shows: crop, projection (the unit carried back to the crop's pixels, --method) or "
    "occlusion (how much a grey square over each part lowers the unit; costly); several, e.g. "
    "'projection,crop', draw a panel of each per unit, as Zeiler & Fergus did.",
    parse=shows,
)
METHOD = Option(
    "How projections carry the unit back: deconvnet (Zeiler & Fergus), guided (guided backpropagation) "
    "or gradient.",
    choices=Method,
)
WINDOW = Option(
    "Occlusion: the grey square's side in model-input pixels [default: a quarter of the box's shorter side].",
    min=1,
    unit="pixels",
)
STRIDE = Option(
    "Occlusion: pixels between the square's positions [default: half the window].", min=1, unit="pixels"
)
CONTRAST = 99.5  # the percentile of a projection's |values| drawn at full contrast (projection_image)
PIXEL = ReceptiveField(1, 1, 1, 1, 0, 0, False)  # a model-input pixel's own field: maps laid over originals


@dataclass
class Explanations:
    """The maps of some top-k rows, in their order."""

    maps: list[np.ndarray | None]  # (h, w, 3) projections or (h, w) occlusion maps over each row's box
    notes: list[str] = field(default_factory=list)  # rows without a map, and why


def unit_explanations(
    index_dir: str | Path,
    rows: pa.Table,
    show: str | Show,
    method: str | Method = Method.deconvnet,
    window: int | None = None,
    stride: int | None = None,
    trust_code: bool = False,
    module: torch.nn.Module | None = None,
) -> Explanations:
    """Per top-k row (the columns of queries/top_images.sql), its map over its box in original pixels,
    float32, NaN where the model saw nothing: a projection (h, w, 3) or an occlusion map (h, w); None where
    its image cannot be decoded as it was indexed (a note says why). `module`: the index's model already
    loaded (pipeline.models.index_model)."""
    show = Show(show)
    method = METHOD.value(method, "method")
    window, stride = WINDOW.value(window, "window"), STRIDE.value(stride, "stride")
    if show is Show.crop:
        raise InvalidInputError("crops are cut, not computed: ask for projection or occlusion")
    params = index_params(index_dir)
    module = module if module is not None else index_model(params, trust_code, f"{show.value}s")
    prep = Preprocessing.from_dict(params["preprocessing"])
    table = rows.to_pylist()
    found = Explanations([None] * len(table))
    con = connect(index_dir, catalog=False)
    try:
        for layer in dict.fromkeys(row["layer"] for row in table):
            at = [i for i, row in enumerate(table) if row["layer"] == layer]
            _, rf = layer_geometry(con, layer)
            maps = _layer_maps(module, layer, rf, prep, params, [table[i] for i in at], show, method, window,
                               stride, found.notes)  # fmt: skip
            for i, values in zip(at, maps, strict=True):
                found.maps[i] = values
    finally:
        con.close()
    return found


def _layer_maps(module, layer, rf, prep, params, rows, show, method, window, stride, notes):
    """The maps of one layer's rows: one call for all of them (rows of many units share each pass)."""
    pixels, problems = decode_rows(rows, prep, params["max_pixels"])
    for image_id, problem in problems.items():
        row = next(row for row in rows if row["image_id"] == image_id)
        notes.append(f"{layer}: no {show.value} for {PurePosixPath(row['relpath'] or row['uri']).name}, "
                     f"the image {problem}")  # fmt: skip
    index = {image_id: i for i, image_id in enumerate(pixels)}
    decoded = [i for i, row in enumerate(rows) if row["image_id"] in index]
    out: list[np.ndarray | None] = [None] * len(rows)
    if not decoded:
        return out
    images = _normalized(list(pixels.values()), prep)
    targets = Targets(
        image=[index[rows[i]["image_id"]] for i in decoded],
        unit=[rows[i]["unit"] for i in decoded],
        y=[rows[i]["y"] for i in decoded],
        x=[rows[i]["x"] for i in decoded],
    )
    if show is Show.projection:
        maps = list(project(module, layer, images, targets, method=method).maps)
    else:
        input_boxes = _whole(len(targets), prep) if rf.is_global else boxes(rf, targets.y, targets.x)
        found = occlusion(module, layer, images, targets, input_boxes, window=window, stride=stride)
        maps = [_on_input(m, b, prep.crop) for m, b in zip(found.maps, found.boxes, strict=True)]
    for i, values in zip(decoded, maps, strict=True):
        out[i] = _over_box(values, rows[i], prep)
    return out


def _normalized(pixels: list[np.ndarray], prep: Preprocessing) -> torch.Tensor:
    """(N, 3, crop, crop) uint8 pixels as the model sees them: scaled to [0, 1], less mean, over std."""
    import torch

    x = torch.from_numpy(np.stack(pixels)).float().div_(255.0)
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _whole(rows: int, prep: Preprocessing) -> np.ndarray:
    """Boxes of the whole input: a global unit's field."""
    return np.tile(np.array([[0, 0, prep.crop, prep.crop]]), (rows, 1))


def _on_input(values: np.ndarray, box: np.ndarray, crop: int) -> np.ndarray:
    """An occlusion map over its box, placed on the whole model input (0 elsewhere)."""
    full = np.zeros((crop, crop), np.float32)
    x0, y0, x1, y1 = (int(v) for v in box)
    full[y0:y1, x0:x1] = values
    return full


def _over_box(values: np.ndarray, row: dict, prep: Preprocessing) -> np.ndarray:
    """A map in model-input pixels ((3, crop, crop) or (crop, crop)) over the row's box in original pixels."""
    box = (row["x0"], row["y0"], row["x1"], row["y1"])
    channels = values if values.ndim == 3 else values[None]
    laid = [to_original(channel, PIXEL, prep, row["width"], row["height"], box) for channel in channels]
    return np.stack(laid, axis=-1) if values.ndim == 3 else laid[0]


# ------------------------------------------------------------------------------------------ drawing


def explained_pictures(
    rows: pa.Table, maps: list[np.ndarray | None], show: str | Show, tile: int, decode: str = "fast"
) -> dict[tuple[str, int], list[Image.Image | None]]:
    """Per (layer, unit), in rank order: each row's map drawn over its box and fitted into a tile as its
    crop would be (queries.grid.fit_crop); None where there is no map (or no crop to draw an occlusion map
    on)."""
    show = Show(show)
    pictures: dict[tuple[str, int], list[tuple[int, Image.Image | None]]] = {}
    for row, values in zip(rows.to_pylist(), maps, strict=True):
        picture = None if values is None else explained_picture(row, values, show, tile, decode)
        pictures.setdefault((row["layer"], row["unit"]), []).append((row["rank"], picture))
    return {key: [p for _, p in sorted(items, key=lambda item: item[0])] for key, items in pictures.items()}


def explained_picture(
    row: dict, values: np.ndarray, show: str | Show, tile: int, decode: str = "fast"
) -> Image.Image | None:
    """One row's map drawn over its box and fitted into a tile as its crop would be; None where an occlusion
    map has no crop to be drawn on (its original is gone or broken)."""
    if Show(show) is Show.projection:
        return fit_crop(projection_image(values), tile)
    crop = open_crop(row, decode)
    return None if crop is None else occlusion_image(fit_crop(crop, tile), values, row["act"])


def projection_image(values: np.ndarray) -> Image.Image:
    """Zeiler & Fergus's grey image of a projection (h, w, 3): 128 where nothing flows, contrast stretched
    so that the largest |value|s (the top 0.5% of the map's, CONTRAST) reach 0 or 255; black where the
    model saw nothing. A map's few largest values would otherwise leave the rest of it grey."""
    finite = np.abs(values[np.isfinite(values)])
    scale = float(np.percentile(finite, CONTRAST)) if finite.size else 0.0
    scale = scale if scale > 0 else float(finite.max(initial=0.0))
    grey = 128.0 + (127.0 / scale if scale > 0 else 0.0) * values
    return Image.fromarray(np.round(np.nan_to_num(grey, nan=0.0)).clip(0, 255).astype(np.uint8))


def occlusion_image(crop: Image.Image, values: np.ndarray, value: float) -> Image.Image:
    """`crop` (at any size) with its occlusion map (drops, over the crop's original pixels) as a heat map: a
    drop of the unit's whole value at its peak (`value`) at the top of the scale, no drop or a rise at the
    bottom."""
    level = np.clip(np.nan_to_num(values / value), 0, 1) if value > 0 else np.zeros_like(values)
    image = Image.fromarray(np.ascontiguousarray(level, dtype=np.float32))
    resized = np.asarray(image.resize(crop.size, Image.Resampling.BILINEAR))
    return heat(crop, np.clip(resized, 0, 1))
