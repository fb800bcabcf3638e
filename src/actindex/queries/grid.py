"""Render "top images for unit k" sheets: receptive-field crops of the originals, one row per unit.

    con = connect("idx/")
    sheet = render_grid(top_images(con, "layer4", [0, 1, 2], k=9), tile=96, decode="fast")
    sheet.save("layer4.png")

Tiles are cut from wherever the index's uri points: a file, an object, a tar member or a Parquet row
(pipeline.storage.image_source).

Layout "row" puts a unit's k crops in one row after a caption; "block" packs them in a square block
(3x3 for k=9) with the caption above. The caption is the layer, the unit and its name where the index has
one ("classifier · unit 282 · tiger cat"). Each tile is the peak's receptive-field box, cut from the original
file opened the way the index decoded it (`decode`, the index's Preprocessing.decode: upright for "fast",
the stored pixels, EXIF ignored, for "torchvision"; `queries.db.index_preprocessing` reads it) and fitted
into the tile, with its rank and activation underneath ('=N' when N images of the index share that
activation), then the label and file name.

With `crops` the tiles show other pictures of the same crops: `actindex grid --mask highlight|heat` passes
queries.masks.masked_tiles, each crop with its unit's activation mask drawn over it.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Sequence
from enum import Enum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont, ImageOps

from actindex.pipeline.decode import as_decoded
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.options import Option
from actindex.pipeline.retry import READS
from actindex.pipeline.sources import path_from_display
from actindex.pipeline.storage import image_source

if TYPE_CHECKING:
    import pyarrow as pa

BACKGROUND = (250, 250, 248)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
MISSING = (225, 225, 225)


class Layout(str, Enum):
    row = "row"  # one row per unit: caption, then its k crops
    block = "block"  # a square block per unit (3x3 for k=9), caption above


LAYOUTS = tuple(item.value for item in Layout)
LAYOUT = Option("row: one row per unit; block: a square block per unit.", choices=Layout)
TILE = Option("Side in pixels of each crop (a grid's tile, a report's image file).", min=16, unit="pixels")
DECODED_KEPT = 16  # decoded originals kept for their other crops (a 12-megapixel photo: 36 MB)


def as_units(value: int | str | Sequence[int]) -> list[int]:
    """A unit, a list of them, or the command line's text ('0-15', '285,1,207': unit_list)."""
    if isinstance(value, str):
        return unit_list(value)
    return [int(value)] if isinstance(value, int) else [int(unit) for unit in value]


def unit_list(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]; '285,1,207' keeps its order; a unit given twice counts once."""
    units: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            units.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise InvalidInputError(f"{text!r} is not a unit list like 0-15 or 3,7,9") from None
    if not units:
        raise InvalidInputError(f"{text!r} names no units, e.g. 0-15 or 3,7,9")
    return list(dict.fromkeys(units))


def render_grid(
    rows: pa.Table,
    tile: int = 96,
    layout: str = "row",
    decode: str = "fast",
    crops: dict[tuple[str, int], list[Image.Image]] | None = None,
    views: Sequence[tuple[str | None, dict[tuple[str, int], list[Image.Image]] | None]] | None = None,
    note: str | None = None,
) -> Image.Image:
    """One sheet for the units in `rows` (the columns of queries/top_images.sql) of an index whose
    preprocessing decoded images the `decode` way (its boxes are in that frame). `crops`: tile x tile
    pictures to show instead of the plain crops, per (layer, unit) in rank order (masks.masked_tiles).
    `views`: several panels per unit, next to each other (one under the other in the row layout), each
    (its caption's last line or None, its pictures or None for the plain crops): Zeiler & Fergus's
    projections beside their crops. `note`: a last line of every unit's caption ("random weights")."""
    if layout not in LAYOUTS:
        raise InvalidInputError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if rows.num_rows == 0:
        raise InvalidInputError("no top-k rows to draw: is the unit indexed and the index complete?")
    by_unit: dict[tuple[str, int, str | None], list[dict]] = defaultdict(list)
    for row in rows.to_pylist():
        by_unit[(row["layer"], row["unit"], row.get("name"))].append(row)
    k = max(len(v) for v in by_unit.values())
    font = _font(max(10, tile // 8))
    views = views or [(None, crops)]
    panels = []
    for key, unit_rows in by_unit.items():
        ranked = sorted(unit_rows, key=lambda r: r["rank"])
        for label, made in views:
            lines = [line for line in (label, note) if line]
            panels.append(
                _panel(key, lines, ranked, k, tile, layout, font, decode, (made or {}).get(key[:2]))
            )
    return _stack(panels, layout, len(views))


def _panel(
    key, extra: list[str], rows: list[dict], k: int, tile: int, layout: str, font, decode: str, crops
) -> Image.Image:
    """One unit's panel: `extra` caption lines below its name, `crops` its pictures (None: plain crops)."""
    caption_h = font.size + 6
    pictures = crops or [crop_tile(row, tile, decode) for row in rows]
    tiles = [_tile(row, picture, tile, font) for row, picture in zip(rows, pictures, strict=True)]
    tile_h = tiles[0].height
    lines = caption_lines(*key) + extra
    if layout == "row":
        label_w = tile + 16
        panel = Image.new("RGB", (label_w + k * (tile + 4), tile_h + 4), BACKGROUND)
        text = "\n".join(_fit(line, label_w - 8, font) for line in lines)
        _text(panel, (6, tile // 2 - font.size * len(lines) // 2), text, font, INK)
        for i, image in enumerate(tiles):
            panel.paste(image, (label_w + i * (tile + 4), 2))
        return panel
    side = math.ceil(math.sqrt(k))
    panel = Image.new("RGB", (side * (tile + 4) + 4, caption_h + 4 + side * (tile_h + 4)), BACKGROUND)
    _text(panel, (6, 2), _fit(" · ".join(lines), panel.width - 8, font), font, INK)
    for i, image in enumerate(tiles):
        panel.paste(image, (4 + (i % side) * (tile + 4), caption_h + 4 + (i // side) * (tile_h + 4)))
    return panel


def caption_lines(layer: str, unit: int, name: str | None = None) -> list[str]:
    """A unit's caption: its layer, its number, and its name where the index has one."""
    return [layer, f"unit {unit}"] + ([name] if name else [])


def _tile(row: dict, picture: Image.Image, tile: int, font) -> Image.Image:
    """The picture (the crop), then two caption lines: rank, act ('=N' when N images share it); file name
    and label."""
    line_h = font.size + 3
    out = Image.new("RGB", (tile, tile + 2 * line_h + 4), BACKGROUND)
    out.paste(picture, (0, 0))
    ties = row.get("ties") or 1
    _text(
        out,
        (2, tile + 2),
        f"#{row['rank']}  {row['act']:.3g}" + (f"  ={ties}" if ties > 1 else ""),
        font,
        MUTED,
    )
    name = PurePosixPath(row.get("relpath") or row["uri"]).name
    if row.get("label"):
        name = f"{row['label']} · {name}"
    _text(out, (2, tile + 2 + line_h), _fit(name, tile - 4, font), font, MUTED)
    return out


def _fit(text: str, width: int, font) -> str:
    """`text`, shortened in the middle with an ellipsis to fit `width` pixels: both ends tell, in file names
    above all ("n02099601_g…retriever.JPEG": the synset and the class name)."""
    if font.getlength(text) <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :] if keep > 1 else ""
        if font.getlength(head + "…" + tail) <= width:
            return head + "…" + tail
    return "…"


def crop_tile(row: dict, tile: int, decode: str = "fast") -> Image.Image:
    """The receptive-field crop of a top-k row, fitted (aspect kept) into a tile; grey if the file is gone."""
    crop = open_crop(row, decode)
    if crop is None:
        return Image.new("RGB", (tile, tile), MISSING)
    return place_in_tile(fit_crop(crop, tile), tile)


def open_crop(row: dict, decode: str = "fast") -> Image.Image | None:
    """The row's box (x0, y0, x1, y1) cut from its original, decoded the index's way; None if the file,
    object, tar member or Parquet row is gone or broken since indexing."""
    try:
        return decoded_original(row["uri"], decode).crop((row["x0"], row["y0"], row["x1"], row["y1"]))
    except Exception:  # noqa: BLE001 - gone or broken since indexing: the caller draws a grey tile
        return None


@functools.lru_cache(maxsize=DECODED_KEPT)
def decoded_original(uri: str, decode: str) -> Image.Image:
    """read_original, the last DECODED_KEPT kept: an image in the top-k of several units of a sheet is
    decoded once for all of its crops (a sheet clears them first, so that a file changed since is read
    again; a report keeps its originals itself: queries.drawing)."""
    return read_original(uri, decode)


def read_original(uri: str, decode: str) -> Image.Image:
    """The original behind `uri`, decoded the index's way and loaded. A transient failure to read it
    (pipeline.retry) is retried for READ_BUDGET_S."""
    return READS.call(_decoded_original, uri, decode, what=uri)


def _decoded_original(uri: str, decode: str) -> Image.Image:
    with Image.open(image_source(path_from_display(uri))) as img:
        decoded = as_decoded(img, decode)
        return decoded.copy() if decoded is img else decoded  # loaded, and alive after the file is closed


def fit_crop(crop: Image.Image, tile: int) -> Image.Image:
    """The crop scaled (aspect kept) to fit a tile: what a tile shows (masks are drawn at this size)."""
    return ImageOps.contain(crop, (tile, tile), Image.Resampling.LANCZOS)


def place_in_tile(image: Image.Image, tile: int) -> Image.Image:
    """`image` (at most tile x tile) centred on a tile of the sheet's background."""
    canvas = Image.new("RGB", (tile, tile), BACKGROUND)
    canvas.paste(image, ((tile - image.width) // 2, (tile - image.height) // 2))
    return canvas


def _stack(panels: list[Image.Image], layout: str, views: int = 1) -> Image.Image:
    """Panels one under the other (row), or in lines of up to four (block; a unit's `views` panels on one
    line)."""
    if layout == "row":
        width, height = max(p.width for p in panels), sum(p.height for p in panels)
        sheet = Image.new("RGB", (width, height), BACKGROUND)
        for i, panel in enumerate(panels):
            sheet.paste(panel, (0, sum(p.height for p in panels[:i])))
        return sheet
    per_line = min(max(4 // views, 1) * views, len(panels))
    w, h = max(p.width for p in panels), max(p.height for p in panels)
    lines = math.ceil(len(panels) / per_line)
    sheet = Image.new("RGB", (per_line * (w + 8), lines * (h + 8)), BACKGROUND)
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % per_line) * (w + 8), (i // per_line) * (h + 8)))
    return sheet


def _font(size: int):
    return ImageFont.load_default(size=size)


def _text(image: Image.Image, xy: tuple[int, int], text: str, font, fill) -> None:
    ImageDraw.Draw(image).multiline_text(xy, text, font=font, fill=fill, spacing=2)
