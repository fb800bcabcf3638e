"""Activation masks on grid tiles: each top image's whole map of the unit, recomputed, over its crop.

    rows = unit_tops("idx/", "layer4", [17, 3], k=9).rows
    tiles = masked_tiles("idx/", rows, tile=128, mode="highlight")   # {("layer4", 17): [9 PIL images], ...}
    render_grid(rows, tile=128, crops=tiles).save("layer4.png")        # what `actindex grid --mask` draws
    maps = unit_mask_maps("idx/", rows)          # {("layer4", 17): [MaskMap, ...]}, in rank order
    maps["layer4", 17][0].values()               # (height, width) float32 over the original; .mask(): bool

The index keeps one number per image and unit (the max, and where it is), so masks are recomputed. The
model is rebuilt from run.json as the job built it (the same model and weights; a weights file that is
gone, or whose sha256 differs from the recorded one, is refused), the rows' images are decoded with the
index's preprocessing and run through it once per call, in batches, in float32 on the CPU whatever device
and precision indexed them, and each unit's whole map is kept (pipeline.unit_maps). A map is laid over its
original through the inverse of the resize and the crop (pipeline.upsample: from receptive-field centres
to model-input pixels to original pixels, bilinearly), cut with the row's own box and drawn at the size of
the grid's crop: mask and crop are the same original pixels, scaled the same way.

Threshold. A pixel is in the mask where the unit's map is at least `threshold` (0.5 by default) times the
unit's reference: the highest map value over the images drawn for the unit, which, with the rows of
`unit_tops` (rank 1 among them), is the unit's top-1 activation over the whole index. One level per unit
makes its k masks comparable: a weaker image shows a smaller region, not one rescaled to its own peak.
NetDissect thresholds at a dataset-wide quantile of the unit's activations over every position of every
image (the top 0.5%); the index keeps each image's maximum only, not the distribution over positions, so
that quantile would take another pass of the model over the whole dataset, while the top-1 activation is
exact in the index. A unit whose maps are nowhere positive has empty masks.

Styles. "highlight" (NetDissect's): outside the mask the crop is dimmed to a third and the mask's border
is drawn in yellow. "heat": the map as a fraction of the reference, clipped to [0, 1], in the jet colour
map (0 dark blue, 1 dark red) blended half over the crop.

Layers without spatial extent. A logit layer (the demo's `classifier`: an nn.Linear after global average
pooling, a 1x1 map) gets its class activation map (CAM): the Linear's weights applied at every position of
the feature map under the global pool. Every call checks that the CAM's spatial mean is the layer's output
and refuses the layer where it is not (max pooling, layers between the pool and the Linear): one line,
"draw it without --mask". It never falls back to the receptive-field box, which for such a layer is the
whole crop and says nothing. Other layers without extent are treated the same way: a global pool's own
output has the identity as weights (the channel's map before pooling), a Sequential head its last Linear.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from actindex.pipeline.decode import Decoder
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.geometry import ReceptiveField
from actindex.pipeline.models import index_model
from actindex.pipeline.options import Option
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.receptive_field import compute_receptive_fields
from actindex.pipeline.sources import path_from_display
from actindex.pipeline.unit_maps import CamMismatchError, UnitMapper
from actindex.pipeline.upsample import to_original
from actindex.queries.db import connect, index_params, layer_geometry
from actindex.queries.grid import MISSING, decoded_original, fit_crop, open_crop, place_in_tile

if TYPE_CHECKING:
    import pyarrow as pa
    import torch


class Mask(str, Enum):
    """How a crop shows where its unit fired."""

    none = "none"  # the plain receptive-field crop: no model run
    highlight = "highlight"  # NetDissect's: outside the mask dimmed, its border outlined
    heat = "heat"  # the map in the jet colour map, blended over the crop


DRAWN = (Mask.highlight, Mask.heat)  # the masks drawn over a crop
DEFAULT_THRESHOLD = 0.5  # a mask's level, times the unit's top-1 activation (the module docstring says why)
# options of `actindex grid` and `actindex report` (queries.sheet.GridOptions, queries.report.ReportConfig)
MASK = Option(
    "How crops show the unit's activation mask: highlight (outside it dimmed, its border outlined), heat "
    "(its map as a colour map) or none (plain crops). Masks run the index's model on the images shown.",
    choices=Mask,
)
THRESHOLD = Option(
    "Masks: their level, a fraction (0-1] of the unit's top-1 activation.",
    flags=("--mask-threshold",),
    min=0,
    max=1,
    min_open=True,
    unit="a fraction",
)
MASK_TRUST = Option(
    "Masks, projections, occlusion: allow loading an index's TorchScript or python: model (runs its code)."
)
BATCH = 16  # images per forward pass
DIM = 1 / 3  # brightness kept outside a highlight mask
DIMMED = np.round(np.arange(256, dtype=np.float32) * DIM).astype(np.uint8)  # each level dimmed (float32)
OUTLINE = (255, 214, 0)  # a highlight mask's border
HEAT_ALPHA = 0.5  # weight of the colour map over the crop
# jet: (level, (r, g, b)) stops
JET = ((0.0, (0, 0, 128)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)), (0.625, (255, 255, 0)),
       (0.875, (255, 0, 0)), (1.0, (128, 0, 0)))  # fmt: skip
# a recomputed activation further than this (relative) from the indexed one is reported, by index precision
AGREEMENT = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 1e-2}


@dataclass
class MaskMap:
    """One top-k row's map of its unit, and how it lies over the row's original image."""

    row: dict  # the top-k row (the columns of queries/top_images.sql)
    fmap: np.ndarray | None  # (h, w) float32: the unit's map on this image; None: see `note`
    rf: ReceptiveField  # where the map's positions are, in model-input pixels
    preprocessing: Preprocessing  # the index's: how the original became the model input
    reference: float  # the unit's highest map value over the rows drawn: its top-1 activation
    threshold: float  # the mask's level: the fraction asked for times `reference` (inf: nothing positive)
    source: str  # the layer the map is on: the row's layer, or the feature map under it (cam)
    cam: bool  # a class activation map: the row's layer has no spatial extent
    recomputed: float | None  # the row's activation computed again now (the map's max, or the logit)
    note: str | None = None  # what the reader should know: no map (and why), or a recomputed value off

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The row's receptive-field box in original pixels: the grid's crop."""
        return (self.row["x0"], self.row["y0"], self.row["x1"], self.row["y1"])

    def values(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The map over the original's pixels, (height, width) float32, NaN where the model saw nothing;
        only over `box` (x0, y0, x1, y1) when given (`self.box`: the crop's pixels)."""
        if self.fmap is None:
            raise InvalidInputError(f"no map for {self.row['uri']}: {self.note}")
        width, height = self.row["width"], self.row["height"]
        return to_original(self.fmap, self.rf, self.preprocessing, width, height, box)

    def mask(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Pixels where the map reaches the threshold (bool, like `values`)."""
        with np.errstate(invalid="ignore"):  # NaN (never seen) is outside
            return self.values(box) >= self.threshold


def masked_tiles(
    index_dir: str | Path,
    rows: pa.Table,
    tile: int = 96,
    mode: str = "highlight",
    threshold: float = DEFAULT_THRESHOLD,
    trust_code: bool = False,
    device: str = "cpu",
) -> dict[tuple[str, int], list[Image.Image]]:
    """Per (layer, unit) of `rows`, its crops (tile x tile, as queries.grid.crop_tile draws them) with the
    unit's mask drawn over each, in rank order; `mode` is "highlight" or "heat"."""
    _check_mode(mode)  # before the model is loaded
    decoded_original.cache_clear()  # originals changed since an earlier call are read again
    return tiles_from_maps(unit_mask_maps(index_dir, rows, threshold, trust_code, device), tile, mode)


def tiles_from_maps(
    maps: dict[tuple[str, int], list[MaskMap]],
    tile: int,
    mode: str,
    pictures: dict[tuple[str, int], list[Image.Image | None]] | None = None,
) -> dict[tuple[str, int], list[Image.Image]]:
    """masked_tiles from maps already computed (one model pass serves several drawings); the masks drawn
    over `pictures` (per (layer, unit), in rank order, each fitted to the tile like its crop: projections,
    occlusion maps) instead of the crops where given."""
    pictures = pictures or {}
    return {
        key: [
            masked_tile(item, tile, mode, pictures[key][i] if key in pictures else None)
            for i, item in enumerate(items)
        ]
        for key, items in maps.items()
    }


def masked_tile(item: MaskMap, tile: int, mode: str, picture: Image.Image | None = None) -> Image.Image:
    """One tile: the row's crop (or `picture` of it, as fit_crop sizes the crop) fitted into tile x tile,
    its mask drawn over it at that size; grey if the file is gone; the plain crop where there is no map
    (item.note says why)."""
    _check_mode(mode)
    if picture is None:
        crop = open_crop(item.row, item.preprocessing.decode)
        if crop is None:
            return Image.new("RGB", (tile, tile), MISSING)
        picture = fit_crop(crop, tile)
    return mask_tile(picture, item, tile, mode)


def mask_tile(fitted: Image.Image, item: MaskMap, tile: int, mode: str) -> Image.Image:
    """masked_tile from the row's crop (or a picture of it) already cut and fitted (queries.grid.fit_crop)."""
    if item.fmap is not None:
        fitted = draw_mask(fitted, item.values(item.box), item.threshold, item.reference, mode)
    return place_in_tile(fitted, tile)


def draw_mask(
    image: Image.Image, values: np.ndarray, threshold: float, reference: float, mode: str
) -> Image.Image:
    """`image` (a crop at any size) with `values` (the map over the crop's original pixels) drawn over it:
    both cover the same pixels, so `values` is scaled to the image's size."""
    if mode == "highlight":
        with np.errstate(invalid="ignore"):
            inside = (values >= threshold).astype(np.float32)
        return highlight(image, _resized(inside, image.size) >= 0.5)
    level = np.clip(np.nan_to_num(values / reference), 0, 1) if reference > 0 else np.zeros_like(values)
    return heat(image, np.clip(_resized(level, image.size), 0, 1))


def highlight(image: Image.Image, inside: np.ndarray) -> Image.Image:
    """NetDissect's style: pixels outside `inside` (bool, image-sized) dimmed, the border outlined."""
    pixels = np.asarray(image.convert("RGB"))
    out = np.where(inside[..., None], pixels, DIMMED[pixels])
    out[_border(inside)] = OUTLINE
    return Image.fromarray(out)


def heat(image: Image.Image, level: np.ndarray) -> Image.Image:
    """`level` (0..1, image-sized) in the jet colour map, blended over the image."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    stops = [stop for stop, _ in JET]
    colours = np.stack([np.interp(level, stops, [c[i] for _, c in JET]) for i in range(3)], axis=-1)
    return Image.fromarray(np.round((1 - HEAT_ALPHA) * pixels + HEAT_ALPHA * colours).astype(np.uint8))


def _border(inside: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (the image's edge does not count as outside)."""
    padded = np.pad(inside, 1, mode="edge")
    core = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~core


def _resized(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map scaled to `size` (width, height), bilinearly (averaging when it shrinks)."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


def _check_mode(mode: str) -> None:
    if mode not in DRAWN:
        drawn = ", ".join(item.value for item in DRAWN)
        raise InvalidInputError(f"mask mode {getattr(mode, 'value', mode)!r} is not one of {drawn}")


# -------------------------------------------------------------------------------------------- the maps


def unit_mask_maps(
    index_dir: str | Path,
    rows: pa.Table,
    threshold: float = DEFAULT_THRESHOLD,
    trust_code: bool = False,
    device: str = "cpu",
    module: torch.nn.Module | None = None,
) -> dict[tuple[str, int], list[MaskMap]]:
    """Per (layer, unit) of `rows` (the top-k rows of unit_tops / queries/top_images.sql), each row's map of
    the unit, in rank order: the model is loaded once (or `module`, the index_model of an earlier call),
    each image decoded and run once for all the layers of `rows`. A layer without a map to draw raises
    CamMismatchError."""

    found = layer_mask_maps(index_dir, rows, threshold, trust_code, device, module)
    if found.refused:
        raise next(iter(found.refused.values()))
    return found.maps


@dataclass
class LayerMasks:
    """The maps of some layers' top-k rows, and the layers refused."""

    maps: dict[tuple[str, int], list[MaskMap]]  # per (layer, unit), in rank order
    refused: dict[str, CamMismatchError]  # layers without spatial extent or a class activation map


def layer_mask_maps(
    index_dir: str | Path,
    rows: pa.Table,
    threshold: float = DEFAULT_THRESHOLD,
    trust_code: bool = False,
    device: str = "cpu",
    module: torch.nn.Module | None = None,
    map_images: Callable[[Callable, list], Iterable] = map,
    advance: Callable[[int], None] = lambda images: None,
) -> LayerMasks:
    """unit_mask_maps of every layer of `rows` at once, a layer without a map to draw set aside in
    `refused`: each image is decoded once (`map_images`, the built-in map or a thread pool's, decodes a
    batch's images) and run once through the model, in batches of at most BATCH images with every layer of
    `rows` traced in the same forward; `advance(n)` is called as each n images are done."""

    THRESHOLD.value(threshold, "threshold")  # (0, 1]
    if rows.num_rows == 0:
        raise InvalidInputError("no top-k rows to draw: is the unit indexed and the index complete?")
    params = index_params(index_dir)
    module = index_model(params, trust_code) if module is None else module
    con = connect(index_dir)
    by_unit: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows.to_pylist():
        by_unit[row["layer"], row["unit"]].append(row)
    prep = Preprocessing.from_dict(params["preprocessing"])
    run = _run_model(module, prep, device, params["max_pixels"], by_unit, map_images, advance)
    tolerance = AGREEMENT.get(params["precision"], max(AGREEMENT.values()))
    maps: dict[tuple[str, int], list[MaskMap]] = {}
    for layer in dict.fromkeys(layer for layer, _ in by_unit):
        if layer in run.refused:
            continue
        run.sources.setdefault(layer, layer)  # no image of the layer could be read: its own positions
        run.cam.setdefault(layer, False)
        rf = (
            _cam_rf(module, run.sources[layer], prep.crop)
            if run.cam[layer]
            else layer_geometry(con, layer)[1]
        )
        for (name, unit), unit_rows in by_unit.items():
            if name == layer:
                maps[layer, unit] = _unit_maps(run, layer, unit, unit_rows, rf, prep, threshold, tolerance)
    return LayerMasks(maps, run.refused)


def _unit_maps(run: _Run, layer: str, unit: int, rows: list[dict], rf, prep, threshold, tolerance):
    """[MaskMap] of one unit's rows, in rank order, with the unit's one threshold."""
    rows = sorted(rows, key=lambda row: row["rank"])
    fmaps = [run.maps.get((layer, unit, row["image_id"])) for row in rows]
    reference = max((float(fmap.max()) for fmap in fmaps if fmap is not None), default=0.0)
    level = threshold * reference if reference > 0 else math.inf
    items = []
    for row, fmap in zip(rows, fmaps, strict=True):
        value = run.outputs[layer, unit, row["image_id"]] if fmap is not None else None
        note = _note(row, value, run.problems.get(row["image_id"]), tolerance)
        items.append(
            MaskMap(row, fmap, rf, prep, reference, level, run.sources[layer], run.cam[layer], value, note)
        )
    return items


@dataclass
class _Run:
    """The model's passes over the images of some layers' rows: the maps those rows need."""

    maps: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)  # (layer, unit, image_id)
    outputs: dict[tuple[str, int, int], float] = field(default_factory=dict)  # the value the index records
    sources: dict[str, str] = field(default_factory=dict)  # layer -> the layer its maps are on
    cam: dict[str, bool] = field(default_factory=dict)  # layer -> its maps are class activation maps
    problems: dict[int, str] = field(default_factory=dict)  # image_id -> why it has no map
    refused: dict[str, CamMismatchError] = field(default_factory=dict)


def _run_model(module, prep: Preprocessing, device: str, max_pixels: int, by_unit: dict, map_images, advance):
    """One forward per batch of images for all the layers of `by_unit` ({(layer, unit): rows}), keeping the
    maps its rows need; the units of a layer are asked for in the order of the rows, as one call would."""
    units: dict[str, list[int]] = defaultdict(list)
    wanted: dict[int, list[tuple[str, int]]] = defaultdict(list)  # image_id -> (layer, unit) it serves
    first: dict[int, dict] = {}  # image_id -> a row of it, in the order of the rows
    for (layer, unit), rows in by_unit.items():
        units[layer].append(unit)
        for row in rows:
            wanted[row["image_id"]].append((layer, unit))
            first.setdefault(row["image_id"], row)
    mapper = UnitMapper(module, list(units), prep, device)
    decoder = Decoder(prep, max_pixels)
    column = {layer: {unit: i for i, unit in enumerate(chosen)} for layer, chosen in units.items()}
    run = _Run()
    for batch in _batches(list(first.values()), BATCH):
        decoded = list(map_images(functools.partial(_decode, decoder), batch))
        ids, pixels = [], []
        for row, (image, problem) in zip(batch, decoded, strict=True):
            if problem is not None:
                run.problems[row["image_id"]] = problem
            else:
                ids.append(row["image_id"])
                pixels.append(image)
        asked = {layer: chosen for layer, chosen in units.items() if layer not in run.refused}
        if ids and asked:
            _keep(run, mapper.maps_of(np.stack(pixels), asked), ids, wanted, column)
        advance(len(batch))
    return run


def _keep(run: _Run, found: dict, ids: list[int], wanted: dict, column: dict) -> None:
    """The maps of a batch that its images' rows need (copies: the batch's arrays are let go)."""
    for layer, result in found.items():
        if isinstance(result, CamMismatchError):
            run.refused[layer] = result
            continue
        run.sources[layer], run.cam[layer] = result.source, result.cam
    for i, image_id in enumerate(ids):
        for layer, unit in wanted[image_id]:
            result = found.get(layer)
            if result is None or isinstance(result, CamMismatchError):
                continue
            run.maps[layer, unit, image_id] = result.values[i, column[layer][unit]].copy()
            run.outputs[layer, unit, image_id] = float(result.outputs[i, column[layer][unit]])


def _batches(items: list, most: int) -> list[list]:
    """`items` in consecutive batches of at most `most`, as even as can be (never a batch of one image
    beside bigger ones: a convolution may sum in another order for a single image)."""
    count = max(1, math.ceil(len(items) / most))
    size, extra = divmod(len(items), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(count) if bounds[i] < bounds[i + 1]]


def decode_rows(rows: list[dict], prep: Preprocessing, max_pixels: int) -> tuple[dict, dict]:
    """({image_id: (3, crop, crop) uint8 pixels}, {image_id: why it cannot be used}): each image of `rows`
    once, decoded as the index decoded it (queries.explain's projections and occlusion)."""
    decoder = Decoder(prep, max_pixels)
    pixels, problems = {}, {}
    for image_id, row in {row["image_id"]: row for row in rows}.items():
        image, problem = _decode(decoder, row)
        if problem is None:
            pixels[image_id] = image
        else:
            problems[image_id] = problem
    return pixels, problems


def _decode(decoder: Decoder, row: dict) -> tuple[np.ndarray | None, str | None]:
    """(3, crop, crop) uint8 pixels of the row's image decoded as the index decoded it, or why not: it fails
    now, or its size changed."""
    decoded = decoder(path_from_display(row["uri"]))
    if decoded.error:
        return None, f"cannot be read now ({decoded.error})"
    if (decoded.width, decoded.height) != (row["width"], row["height"]):
        return None, (
            f"is {decoded.width}x{decoded.height} now but was {row['width']}x{row['height']} when "
            "indexed: it changed; index it again"
        )
    return decoded.pixels, None


def _note(row: dict, recomputed: float | None, problem: str | None, tolerance: float) -> str | None:
    """Why a row has no mask, or that the activation computed now is not the indexed one."""
    where = f"{row['layer']} unit {row['unit']}, {PurePosixPath(row.get('relpath') or row['uri']).name}"
    if recomputed is None:
        return f"{where}: no mask, the image {problem}"
    if abs(recomputed - row["act"]) > tolerance * max(1.0, abs(row["act"])):
        return (
            f"{where}: the activation computed now is {recomputed:.4g}, the index has {row['act']:.4g}: "
            "has the image or the software changed since indexing?"
        )
    return None


def _cam_rf(module, source: str, crop: int) -> ReceptiveField:
    """Where the CAM's feature map positions are: traced, as the index traces its layers."""

    return compute_receptive_fields(module, [source], (crop, crop))[source]


def mask_notes(maps: dict[tuple[str, int], list[MaskMap]]) -> list[str]:
    """What the reader of masked tiles should know: CAM layers, images drawn without a mask and why,
    activations that differ from the index's, units whose maps are nowhere positive."""
    notes = []
    for layer in dict.fromkeys(layer for layer, _ in maps):
        items = next(items for (name, _), items in maps.items() if name == layer)
        if items and items[0].cam:
            notes.append(
                f"{layer} has no spatial extent: its masks are class activation maps of {items[0].source}"
            )
    for (layer, unit), items in maps.items():
        if any(item.fmap is not None for item in items) and items[0].threshold == math.inf:
            notes.append(f"{layer} unit {unit}: its maps are nowhere positive on these images: no mask drawn")
        notes += [item.note for item in items if item.note]
    return notes
