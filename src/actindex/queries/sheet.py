"""A unit sheet: what `actindex grid` and Index.grid draw, its top-k crops with masks, and its notes.

    sheet = unit_sheet("idx/", "layer4", [0, 1, 2], k=9, mask="highlight")
    sheet.image.save("layer4.png"); print(*sheet.notes, sep="\n")

It puts together the index's answer (queries.db.unit_tops), the masks (queries.masks) and the drawing
(queries.grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from actindex.queries.db import index_preprocessing, unit_tops
from actindex.queries.grid import DEFAULT_THRESHOLD, decoded_original, render_grid
from actindex.queries.masks import mask_notes, tiles_from_maps, unit_mask_maps


@dataclass
class Sheet:
    """What `actindex grid` draws for some units of an index, and what it tells the reader."""

    image: Image.Image
    units: int  # units drawn (those with at least one ok image)
    notes: list[str]  # where the answer came from, ties, masks


def unit_sheet(
    index_dir: str | Path,
    layer: str,
    units: list[int],
    k: int = 9,
    tile: int = 96,
    layout: str = "row",
    mask: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    trust_code: bool = False,
) -> Sheet:
    """The sheet of `units` of `layer`: their top-k crops (queries.db.unit_tops), with `mask` ("highlight"
    or "heat", queries.masks) drawn over them, or plain with None."""
    decoded_original.cache_clear()
    tops = unit_tops(index_dir, layer, units, k)
    notes, crops = list(tops.notes), None
    if mask is not None:
        maps = unit_mask_maps(index_dir, tops.rows, threshold, trust_code)
        crops, notes = tiles_from_maps(maps, tile, mask), notes + mask_notes(maps)
    decode = index_preprocessing(index_dir).decode  # crops are cut from the pixels the index decoded
    image = render_grid(tops.rows, tile=tile, layout=layout, decode=decode, crops=crops)
    return Sheet(image, len(set(tops.rows.column("unit").to_pylist())), notes)
