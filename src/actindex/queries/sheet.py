"""A unit sheet: what `actindex grid` and Index.grid draw, its top-k crops with masks, and its notes.

    sheet = unit_sheet("idx/", "layer4", [0, 1, 2], GridOptions(k=9, mask="highlight"))
    sheet.image.save("layer4.png"); print(*sheet.notes, sep="\n")

It puts together the index's answer (queries.db.unit_tops), the masks (queries.masks) and the drawing
(queries.grid). GridOptions are the options of `actindex grid` (pipeline.options): its flags, Index.grid's
keywords.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from actindex.pipeline.attribution.rules import Method
from actindex.pipeline.models import index_model
from actindex.pipeline.options import check
from actindex.pipeline.topk import K
from actindex.queries.db import index_params, index_preprocessing, unit_tops
from actindex.queries.explain import METHOD, SHOW, STRIDE, WINDOW, Show, explained_pictures, unit_explanations
from actindex.queries.grid import LAYOUT, MISSING, TILE, Layout, decoded_original, place_in_tile, render_grid
from actindex.queries.masks import (
    DEFAULT_THRESHOLD,
    MASK,
    MASK_TRUST,
    THRESHOLD,
    Mask,
    mask_notes,
    tiles_from_maps,
    unit_mask_maps,
)


@dataclass
class GridOptions:
    """How a sheet is drawn: the options of `actindex grid` and the keywords of Index.grid."""

    k: int = K.field(9)
    tile: int = TILE.field(96)
    layout: Layout = LAYOUT.field(Layout.row)
    show: tuple[Show, ...] = SHOW.field((Show.crop,))
    method: Method = METHOD.field(Method.deconvnet)
    window: int | None = WINDOW.field(None)
    stride: int | None = STRIDE.field(None)
    mask: Mask = MASK.field(Mask.none)  # None is Mask.none too
    threshold: float = THRESHOLD.field(DEFAULT_THRESHOLD)
    trust_code: bool = MASK_TRUST.field(False)

    def __post_init__(self) -> None:
        self.mask = Mask.none if self.mask is None else self.mask
        check(self)


@dataclass
class Sheet:
    """What `actindex grid` draws for some units of an index, and what it tells the reader."""

    image: Image.Image
    units: int  # units drawn (those with at least one ok image)
    notes: list[str]  # where the answer came from, ties, masks


def unit_sheet(
    index_dir: str | Path, layer: str, units: list[int], options: GridOptions | None = None
) -> Sheet:
    """The sheet of `units` of `layer`: their top-k crops (queries.db.unit_tops), or their projections or
    occlusion maps (queries.explain, options.show), with the mask of `options` drawn over them
    (queries.masks), or plain with Mask.none."""
    options = options or GridOptions()
    decoded_original.cache_clear()
    tops = unit_tops(index_dir, layer, units, options.k)
    decode = index_preprocessing(index_dir).decode  # crops are cut from the pixels the index decoded
    notes, module = list(tops.notes), None
    explained = [show for show in options.show if show is not Show.crop]
    if explained or options.mask is not Mask.none:
        purpose = f"{explained[0].value}s" if explained else "masks"
        module = index_model(index_params(index_dir), options.trust_code, purpose)
    pictures: dict[Show, dict | None] = {Show.crop: None}
    for show in explained:
        found = unit_explanations(
            index_dir, tops.rows, show, options.method, options.window, options.stride, module=module
        )
        pictures[show] = explained_pictures(tops.rows, found.maps, show, options.tile, decode)
        notes += found.notes
    if options.mask is not Mask.none:
        maps = unit_mask_maps(index_dir, tops.rows, options.threshold, options.trust_code, module=module)
        tiles = {
            show: tiles_from_maps(maps, options.tile, options.mask, pictures[show]) for show in options.show
        }
        notes += mask_notes(maps)
    else:
        tiles = {show: _placed(pictures[show], options.tile) for show in options.show}
    views = [(None if show is Show.crop else show.value, tiles[show]) for show in options.show]
    note = "random weights" if tops.random_weights else None
    image = render_grid(
        tops.rows, tile=options.tile, layout=options.layout.value, decode=decode, views=views, note=note
    )
    return Sheet(image, len(set(tops.rows.column("unit").to_pylist())), notes)


def _placed(pictures: dict | None, tile: int) -> dict | None:
    """Pictures fitted to a tile, each centred on one (grey where there is none); None stays None (crops)."""
    if pictures is None:
        return None
    blank = Image.new("RGB", (tile, tile), MISSING)
    return {
        key: [blank if p is None else place_in_tile(p, tile) for p in items]
        for key, items in pictures.items()
    }
