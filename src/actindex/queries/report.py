"""`actindex report`: a static site of an index, to open from disk (file://) with no server and no network.

    plan = plan_report(ReportConfig(index="idx/", out=Path("site/"), layers=("layer4",), units=(0, 1, 2)))
    print(plan.describe())        # units, crops, masks, about how long, and the faster options
    summary = write_report(plan, advance=lambda stage, n: None)   # site/index.html, site/layers/...

`index.html` shows the run (model, weights, layers, images, errors, when, how long) and links one page per
layer. A layer page is a grid of unit cards: the unit's number and name, its top-k receptive-field crops
(one image file each, loaded lazily), a histogram of its per-image maxima and the label purity of its
top-k. The cards are drawn in the browser from a data file (`layers/<layer>.js`, a script: Chromium does
not let a page fetch() JSON from file://), in pages of 100, sorted by unit number, purity or peak activation.
Beside each crop `u00017-1.webp` are its projection `u00017-1.projection.webp` (by default) and occlusion map
`u00017-1.occlusion.webp` (with --occlusion), drawn by queries.explain; the cards switch between them. Where
the contributions table has rows for a layer, each card lists the units it is built from (with their top-1
crop, drawn here if their layer is not) and those it feeds, linking their cards (`layer=relu1.html#unit=3`).

plan_report asks the index everything the report draws (layers, units, each unit's top-k, their links) and
loads the model for the masks and maps, so that every refusal (a folder that is not a report, weights gone, a
model that needs --trust-code, units no layer has) comes before anything is drawn or written. Crops carry the
unit's activation mask by default (queries.masks: the model runs once over the distinct images of all the
top-k rows, every layer in one forward) and are drawn by a thread pool, every original decoded once for all of
its crops (queries.drawing). Projections and occlusion maps take one backward pass per unit (EXPLAIN_UNITS
units per call of queries.explain.unit_explanations) with the same model. Names come from the `units` view,
purity from the catalog's label_selectivity: the report shows what `actindex sql` answers.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING
from urllib.parse import quote

from actindex._version import __version__
from actindex.pipeline.attribution.rules import Method
from actindex.pipeline.errors import InvalidInputError, UnknownNameError
from actindex.pipeline.layout import IndexLayout, layer_dirname, marker_totals
from actindex.pipeline.model_args import random_weights
from actindex.pipeline.models import index_model
from actindex.pipeline.options import Option, check
from actindex.pipeline.patterns import LAYERS, pattern_regex
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.topk import K
from actindex.queries.catalog import label_selectivity
from actindex.queries.db import INDEX, IncompleteIndexError, UnitTops, connect, run_sql_file, unit_tops
from actindex.queries.drawing import Crop, Drawing, crop_format, draw_crops, save_crop
from actindex.queries.explain import METHOD, STRIDE, WINDOW, Show, explained_picture, unit_explanations
from actindex.queries.grid import MISSING, TILE, as_units, place_in_tile
from actindex.queries.masks import (
    DEFAULT_THRESHOLD,
    MASK,
    MASK_TRUST,
    THRESHOLD,
    LayerMasks,
    Mask,
    layer_mask_maps,
    mask_notes,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# duckdb, pyarrow and Pillow are imported where they are used: the CLI imports this module for its options
# (`actindex --help` stays fast).

PAGE_SIZE = 100  # cards per page of a layer page (report.js reads it from the data file)
BINS = 24  # histogram bins per unit
PREVIEW_UNITS = 6  # top-1 crops shown beside each layer on the index page
# The plan's estimate: seconds of one core per crop (masked / plain) and per image through the model, on the
# 2-core development VM (bench/report_speed.py: the demo index's 1,080 units, 9,720 crops from 20 photos)
SECONDS_PER_CROP = {Mask.none: 0.004, Mask.highlight: 0.008, Mask.heat: 0.008}
SECONDS_PER_MODEL_IMAGE = 0.05
GIL_SHARE = 0.2  # of a masked crop's time, spent holding the GIL (queries.drawing): what threads cannot share
# ... and per map (projection, occlusion) of a top-k row: the model's backward passes and the drawing;
# measured on 2 idle cores, EfficientNet-Lite0 at 224 px (the demo index, `actindex report --mask none`
# with and without them): 0.12 s a projection of a classifier unit, 0.1 of a blocks.3 unit, 0.5 an
# occlusion map
SECONDS_PER_MAP = {Show.projection: 0.1, Show.occlusion: 0.5}
EXPLAIN_UNITS = 32  # units whose maps are computed in one call (held in memory until drawn)
LINKS = 5  # sources ("built from") and units fed ("feeds") listed on a card, largest |score| first
SITE_MANIFEST = "report.json"  # what made the site; its presence marks a folder the report may replace
ERRORS_SHOWN = 20  # undecodable images listed on the index page


@dataclass
class ReportConfig:
    """What `actindex report` draws: its arguments and options (pipeline.options), Index.report's keywords."""

    index: str = INDEX.field()
    out: Path = Option(
        "Folder for the site (created; a previous report there is replaced).", flags=("--out", "-o")
    ).field()
    layers: tuple[str, ...] | None = LAYERS.field(  # None: every indexed layer
        None, help="Comma-separated layer names or globs, e.g. 'layer4,fc' (default: every indexed layer)."
    )
    units: tuple[int, ...] | None = Option(  # None: all
        "Units to draw, e.g. 0-99 or 282,967 (default: all); each layer draws those it has.",
        flags=("--units", "-u"),
        parse=as_units,
    ).field(None)
    k: int = K.field(9)
    tile: int = TILE.field(128)
    mask: Mask = MASK.field(Mask.highlight)
    threshold: float = THRESHOLD.field(DEFAULT_THRESHOLD)
    trust_code: bool = MASK_TRUST.field(False)
    workers: int | None = Option(
        "Threads drawing crops (default: one per CPU).",
        min=1,
        unit="thread",
    ).field(None)
    projections: bool = Option(
        "Draw each crop's projection (the unit carried back to its pixels, --method) for the cards' "
        "Projections view.",
        flags=("--projections/--no-projections",),
    ).field(True)
    method: Method = METHOD.field(Method.deconvnet)
    occlusion: bool = Option(
        "Draw each crop's occlusion map too (how much a grey square over each part lowers the unit; costly), "
        "for the cards' Occlusion view.",
        flags=("--occlusion",),
    ).field(False)
    window: int | None = WINDOW.field(None)
    stride: int | None = STRIDE.field(None)

    def __post_init__(self):
        check(self)
        if not self.occlusion and (self.window is not None or self.stride is not None):
            raise InvalidInputError("--window and --stride shape the occlusion maps: add --occlusion")
        self.out = Path(self.out)
        self.units = None if self.units is None else tuple(self.units)
        if self.units is not None and (not self.units or min(self.units) < 0):
            raise InvalidInputError("--units: give unit numbers of 0 or more, e.g. 0-15 or 282,967")


@dataclass
class LayerPlan:
    info: dict  # the layer's row of queries/report_layers.sql
    units: list[int]  # the units drawn, ascending
    tops: UnitTops | None = None  # their top-k rows (queries.db.unit_tops), asked by plan_report
    built_from: dict[int, list[dict]] = field(default_factory=dict)  # unit -> its strongest sources
    feeds: dict[int, list[dict]] = field(default_factory=dict)  # unit -> the higher units it feeds most

    @property
    def name(self) -> str:
        return self.info["layer"]

    @property
    def dirname(self) -> str:
        """The layer's name in the site's file names: as in the index's folders (never '.', '..' or '/')."""

        return layer_dirname(self.name)


@dataclass
class ReportPlan:
    config: ReportConfig
    manifest: dict  # the index's run.json
    layers: list[LayerPlan]
    decode: str  # how the index decoded its images (the frame of its boxes)
    images: tuple[int, int]  # (images, ok images) of the completed shards
    indexed_layers: int  # layers in the index (the report may draw fewer)
    notes: list[str] = field(default_factory=list)  # what was left out and why
    model: object = None  # with masks or maps: the index's model (pipeline.models.index_model)
    con: object = None  # the index's DuckDB views (queries.db.connect), opened by plan_report
    # layer -> top-1 rows of the source units that cards show ("built from") and the report does not draw
    thumbs: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return sum(len(layer.units) for layer in self.layers)

    @property
    def crops(self) -> int:
        """Crop files the report draws: one per top-k row, and the top-1 crops of the sources not drawn."""
        return self.top_rows + sum(rows.num_rows for rows in self.thumbs.values())

    @property
    def top_rows(self) -> int:
        return sum(layer.tops.rows.num_rows for layer in self.layers)

    @property
    def shows(self) -> list[Show]:
        """The maps drawn beside each crop (the cards' views besides crops)."""
        return [Show.projection] * self.config.projections + [Show.occlusion] * self.config.occlusion

    @property
    def maps(self) -> int:
        """Projection and occlusion files the report draws: one of each asked for per top-k row."""
        return self.top_rows * len(self.shows)

    @property
    def maps_label(self) -> str:
        """What plan.maps counts: 'projections', 'occlusion maps' or 'projections and occlusion maps'."""
        return " and ".join("projections" if s is Show.projection else "occlusion maps" for s in self.shows)

    @property
    def mask_images(self) -> int:
        """Images the model runs over for the masks (each once): the distinct images of the crops' rows."""
        if self.config.mask is Mask.none:
            return 0
        tables = [layer.tops.rows for layer in self.layers] + list(self.thumbs.values())
        return len({i for rows in tables for i in rows.column("image_id").to_pylist()})

    @property
    def workers(self) -> int:
        return self.config.workers or os.cpu_count() or 1

    def estimate(self, mask: Mask | None = None, shows: Sequence[Show] | None = None) -> float:
        """Seconds the drawing should take with `mask` and the maps `shows` (the plan's by default), with the
        plan's threads on this machine's cores (the part of a crop that holds the GIL runs on one core at a
        time; the model's passes use torch's threads)."""
        mask = self.config.mask if mask is None else mask
        shows = self.shows if shows is None else shows
        model = self.mask_images * SECONDS_PER_MODEL_IMAGE if mask is not Mask.none else 0.0
        maps = self.top_rows * sum(SECONDS_PER_MAP[show] for show in shows)
        cores = min(self.workers, os.cpu_count() or 1)
        return model + maps + self.crops * SECONDS_PER_CROP[mask] * (GIL_SHARE + (1 - GIL_SHARE) / cores)

    def describe(self) -> str:
        """One line: what the report draws, about how long it takes, and how to make it faster."""
        layers = ", ".join(f"{layer.name} {len(layer.units):,}" for layer in self.layers[:4])
        layers += f", {len(self.layers) - 4} more layers" if len(self.layers) > 4 else ""
        what = f"drawing {self.units:,} units ({layers}): {self.crops:,} crops"
        faster = "--units (fewer units)"
        if self.config.mask is Mask.none:
            what += " without masks"
        else:
            what += f" with {self.config.mask.value} masks, the model over {self.mask_images:,} images"
            faster += f", --mask none (plain crops, {_about(self.estimate(Mask.none))})"
        if self.config.projections:
            what += f"; {self.top_rows:,} projections ({self.config.method.value})"
            others = [show for show in self.shows if show is not Show.projection]
            faster += f", --no-projections ({_about(self.estimate(shows=others))})"
        if self.config.occlusion:
            what += f"; {self.top_rows:,} occlusion maps"
            faster += f", no --occlusion ({_about(self.estimate(shows=self.shows[:-1]))})"
        threads = f"{self.workers} thread{'s' * (self.workers != 1)}"
        return f"{what}; {_about(self.estimate())} on {threads}. Faster: {faster}"


def _about(seconds: float) -> str:
    """A rough duration: 'about 40 s', 'about 6 min', 'about 2 h 10 min'."""
    if seconds < 60:
        return f"about {max(1, round(seconds / 5) * 5 if seconds >= 10 else round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


@dataclass
class ReportSummary:
    out: Path  # the site's folder
    units: dict[str, int]  # units drawn per layer
    crops: int  # crop image files written
    maps: int  # projection and occlusion files written
    notes: list[str]  # what the reader should know (units left out, answers from activations, ties)
    seconds: float


def plan_report(config: ReportConfig) -> ReportPlan:
    """Check the request against the index (layers, units, k, mask, the folder) and ask the index for every
    top-k row the report draws, before anything is drawn or written."""

    con = connect(config.index)  # refuses a folder that is not an index
    layout = IndexLayout(config.index)
    manifest = layout.read_manifest()
    infos = run_sql_file(con, "report_layers").to_pylist()
    if not infos:
        raise IncompleteIndexError(
            f"{config.index} has no layers yet: its first run has not finished a shard"
        )
    chosen = select_layers([info["layer"] for info in infos], config.layers)
    layers, notes = _plan_units([info for info in infos if info["layer"] in chosen], config.units)
    _check_k(manifest, config.k)
    _check_folder(config.out)
    images, ok, _ = marker_totals(layout.completed_shards())
    decode = Preprocessing.from_dict(manifest["params"]["preprocessing"]).decode
    plan = ReportPlan(config, manifest, layers, decode, (images, ok), len(infos), notes, con=con)
    needs = ["masks"] * (config.mask is not Mask.none) + [f"{show.value}s" for show in plan.shows]
    if needs:  # a model needing --trust-code, weights gone: refused before drawing
        plan.model = index_model(manifest["params"], config.trust_code, " and ".join(needs))
    for layer in layers:
        layer.tops = unit_tops(config.index, layer.name, layer.units, config.k)
    _plan_links(plan, [info["layer"] for info in infos])
    return plan


def _plan_links(plan: ReportPlan, indexed: list[str]) -> None:
    """Each drawn unit's strongest sources and the units it feeds (the contributions table), and the top-1
    rows of the sources the report does not draw, whose crops the cards show."""
    for layer in plan.layers:
        asked = {"layer": layer.name, "units": layer.units, "n": LINKS}
        for row in run_sql_file(plan.con, "report_built_from", **asked).to_pylist():
            layer.built_from.setdefault(row.pop("unit"), []).append(row)
        for row in run_sql_file(plan.con, "report_feeds", **asked).to_pylist():
            layer.feeds.setdefault(row.pop("src_unit"), []).append(row)
    drawn = {layer.name: set(layer.units) for layer in plan.layers}
    missing: dict[str, set[int]] = {}
    for layer in plan.layers:
        for row in (row for rows in layer.built_from.values() for row in rows):
            if row["src_layer"] in indexed and row["src_unit"] not in drawn.get(row["src_layer"], ()):
                missing.setdefault(row["src_layer"], set()).add(row["src_unit"])
    for name, units in missing.items():
        plan.thumbs[name] = unit_tops(plan.config.index, name, sorted(units), 1).rows


def select_layers(indexed: list[str], patterns: Sequence[str] | None) -> list[str]:
    """The indexed layers that `patterns` (names or globs, as `actindex index --layers` takes them) name, in
    index order; a pattern that names none raises an error listing the indexed layers."""

    if not patterns:
        return list(indexed)
    regexes = [pattern_regex(pattern) for pattern in patterns]
    for pattern, regex in zip(patterns, regexes, strict=True):
        if not any(regex.match(name) for name in indexed):
            raise UnknownNameError(
                f"layer {pattern!r} is not in this index; indexed layers: {', '.join(indexed)}"
            )
    return [name for name in indexed if any(regex.match(name) for regex in regexes)]


def _plan_units(infos: list[dict], units: Sequence[int] | None) -> tuple[list[LayerPlan], list[str]]:
    """Each layer draws the asked units it has; a layer with none of them is left out (with a note), and
    units that no chosen layer has are an error."""
    if units is None:
        return [LayerPlan(info, list(range(info["channels"]))) for info in infos], []
    widest = max(info["channels"] for info in infos)
    beyond = sorted(u for u in set(units) if u >= widest)
    if len(beyond) == len(set(units)):
        ranges = ", ".join(f"{info['layer']} 0-{info['channels'] - 1}" for info in infos)
        raise UnknownNameError(f"unit {beyond[0]} is out of range of every layer chosen (units: {ranges})")
    plans, notes = [], []
    for info in infos:
        inside = sorted(u for u in set(units) if u < info["channels"])
        if len(inside) < len(set(units)):
            left_out = len(set(units)) - len(inside)
            notes.append(
                f"{info['layer']}: {left_out} units not drawn (it has units 0-{info['channels'] - 1})"
            )
        if inside:
            plans.append(LayerPlan(info, inside))
    return plans, notes


def _check_k(manifest: dict, k: int) -> None:
    kept, store = manifest["params"]["k"], manifest["params"].get("store", "dense")
    if store == "topk" and k > kept:
        raise InvalidInputError(
            f"this index kept the top {kept} images per unit and no activations (--store topk); "
            f"ask for --k {kept} or less"
        )


def write_report(
    plan: ReportPlan, advance: Callable[[str, int], None] = lambda stage, n: None
) -> ReportSummary:
    """Draw the crops and write the site. `advance(stage, n)` tells the progress: ("images", n) as n more
    images have been through the model for the masks (plan.mask_images in all), then ("maps", n) as n more
    projections and occlusion maps are saved (plan.maps), then ("crops", n) as n more crops are saved
    (plan.crops)."""

    started = time.time()
    config = plan.config
    _prepare_folder(config.out)
    with ThreadPoolExecutor(max_workers=plan.workers, thread_name_prefix="actindex-report") as pool:
        masks = _masks(plan, pool, lambda n: advance("images", n))
        crops, notes_of = _crops(plan, masks)
        for layer in plan.layers:
            notes_of[layer.name] += _draw_maps(plan, layer, pool, lambda n: advance("maps", n))
        drawing = Drawing(config.tile, config.mask.value, plan.decode)
        draw_crops(crops, drawing, pool, lambda n: advance("crops", n))
    notes, pages = list(plan.notes), []
    for layer in plan.layers:
        page = _layer_page(plan.con, plan, layer, notes_of[layer.name])
        notes += page.pop("notes")
        pages.append(page)
    _write_index(plan, pages, _errors(plan.con, plan))
    _copy_assets(config.out)
    units = {layer.name: len(layer.units) for layer in plan.layers}
    _write_json(config.out / SITE_MANIFEST, _site_manifest(plan, units))
    return ReportSummary(config.out, units, len(crops), plan.maps, notes, time.time() - started)


def _masks(plan: ReportPlan, pool: ThreadPoolExecutor, advance: Callable[[int], None]) -> LayerMasks:
    """The maps of every top-k row of the report (none with --mask none): one pass of the model."""
    config = plan.config
    if config.mask is Mask.none:
        return LayerMasks({}, {})
    import pyarrow as pa

    rows = pa.concat_tables([layer.tops.rows for layer in plan.layers] + list(plan.thumbs.values()))
    if rows.num_rows == 0:
        return LayerMasks({}, {})
    return layer_mask_maps(
        config.index, rows, config.threshold, config.trust_code, module=plan.model, map_images=pool.map,
        advance=advance,
    )  # fmt: skip


def _crops(plan: ReportPlan, masks: LayerMasks) -> tuple[list[Crop], dict[str, list[str]]]:
    """Every crop file of the report, and each layer's notes about its masks (a layer refused is drawn
    without them, and says why)."""
    crops, notes = [], {}
    for layer in plan.layers:
        folder = plan.config.out / "layers" / layer.dirname
        folder.mkdir(parents=True, exist_ok=True)
        refused = masks.refused.get(layer.name)
        maps = {key: items for key, items in masks.maps.items() if key[0] == layer.name}
        notes[layer.name] = [f"crops drawn without masks: {refused}"] if refused else mask_notes(maps)
        item = {(i.row["unit"], i.row["rank"]): i for items in maps.values() for i in items}
        for row in layer.tops.rows.to_pylist():
            mask = item.get((row["unit"], row["rank"]))
            crops.append(Crop(folder / crop_name(row["unit"], row["rank"]), row, mask))
    for name, rows in plan.thumbs.items():  # sources' top-1 crops, beside their layer's crops
        folder = plan.config.out / "layers" / layer_dirname(name)
        folder.mkdir(parents=True, exist_ok=True)
        maps = {key: items for key, items in masks.maps.items() if key[0] == name}
        item = {(i.row["unit"], i.row["rank"]): i for items in maps.values() for i in items}
        for row in rows.to_pylist():
            crops.append(Crop(folder / crop_name(row["unit"], 1), row, item.get((row["unit"], row["rank"]))))
    return crops, notes


def _draw_maps(plan: ReportPlan, layer: LayerPlan, pool: ThreadPoolExecutor, advance: Callable[[int], None]
               ) -> list[str]:  # fmt: skip
    """Save the projections and occlusion maps of a layer's top-k rows beside their crops
    (`u00017-1.projection.webp`), EXPLAIN_UNITS units per call (one backward pass per unit); returns the
    notes about rows without a map."""
    import pyarrow as pa
    import pyarrow.compute as pc

    config, rows, notes = plan.config, layer.tops.rows, []
    folder = config.out / "layers" / layer.dirname
    for show in plan.shows:
        for start in range(0, len(layer.units), EXPLAIN_UNITS):
            group = pa.array(layer.units[start : start + EXPLAIN_UNITS], pa.int64())
            chunk = rows.filter(pc.is_in(pc.cast(rows["unit"], pa.int64()), value_set=group))
            if chunk.num_rows == 0:
                continue
            found = unit_explanations(config.index, chunk, show, config.method, config.window, config.stride,
                                      config.trust_code, module=plan.model)  # fmt: skip
            notes += found.notes
            saves = [pool.submit(_save_map, row, values, show, folder, config.tile, plan.decode)
                     for row, values in zip(chunk.to_pylist(), found.maps, strict=True)]  # fmt: skip
            for save in saves:
                save.result()  # raises a task's error
            advance(chunk.num_rows)
    return notes


def _save_map(row: dict, values, show: Show, folder: Path, tile: int, decode: str) -> None:
    """One map's file, drawn as `actindex grid --show` draws it; grey where there is none (noted)."""
    from PIL import Image

    picture = None if values is None else explained_picture(row, values, show, tile, decode)
    image = Image.new("RGB", (tile, tile), MISSING) if picture is None else place_in_tile(picture, tile)
    save_crop(image, folder / view_name(row["unit"], row["rank"], show.value))


def _check_folder(out: Path) -> None:
    """A folder the report may write: new, empty, or holding a previous report (which it replaces)."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MANIFEST).is_file():
        raise InvalidInputError(
            f"--out {out} holds files that are not an actindex report; give an empty or new folder"
        )


def _prepare_folder(out: Path) -> None:
    """Create `out`, or clear the previous report in it; a folder holding anything else is never touched."""
    _check_folder(out)
    for name in ("layers", "assets"):
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------ layer pages


def _layer_page(con, plan: ReportPlan, layer: LayerPlan, mask_notes: list[str]) -> dict:
    """Write one layer's page and data file (its crops are drawn); returns what the index page shows of
    it, with the notes of its answer."""

    config = plan.config
    records = unit_records(
        layer.tops.rows,
        layer.units,
        names=unit_names(con, layer.name),
        purity=label_purity(con, layer.name, min(config.k, plan.manifest["params"]["k"])),
        histograms=_histograms(con, plan, layer),
    )
    _add_links(plan, layer, records)
    notes = layer.tops.notes + mask_notes + _purity_notes(plan, records)
    data = _layer_data(plan, layer, records, notes)
    script = "window.ACTINDEX_LAYER = " + json.dumps(data, separators=(",", ":"), allow_nan=False) + ";\n"
    (config.out / "layers" / f"{layer.dirname}.js").write_text(script, encoding="utf-8")
    _write_layer_html(plan, layer)
    return _index_entry(layer, records, notes)


def _add_links(plan: ReportPlan, layer: LayerPlan, records: list[dict]) -> None:
    """Each card's "built from" (sources with their top-1 crop) and "feeds" lists, linking the cards of the
    units the report draws."""
    drawn = {other.name: set(other.units) for other in plan.layers}
    crops = {(name, unit) for name, rows in plan.thumbs.items() for unit in rows.column("unit").to_pylist()}
    crops |= {(other.name, u) for other in plan.layers for u in other.tops.rows.column("unit").to_pylist()}
    for record in records:
        unit = record["unit"]
        record["from"] = [
            _link(row["src_layer"], row["src_unit"], row["src_name"], row, drawn)
            | {"img": _thumb(row["src_layer"], row["src_unit"], crops)}
            for row in layer.built_from.get(unit, [])
        ]
        record["feeds"] = [
            _link(row["layer"], row["unit"], row["name"], row, drawn) for row in layer.feeds.get(unit, [])
        ]


def _link(name: str, unit: int, unit_name: str | None, row: dict, drawn: dict[str, set[int]]) -> dict:
    """A unit a card links: its layer, number, name, score and share, and its card's address where the
    report draws it (`layer%3Drelu1.html#unit=3`, beside this page)."""
    href = None
    if unit in drawn.get(name, ()):
        href = quote(layer_dirname(name) + ".html", safe="") + f"#unit={unit}"
    return {"layer": name, "unit": unit, "name": unit_name, "score": _number(row["score"]),
            "share": _number(row["share"]), "href": href}  # fmt: skip


def _thumb(name: str, unit: int, crops: set[tuple[str, int]]) -> str | None:
    """The unit's top-1 crop, relative to a layer page; None where the report has none (a layer that is
    not indexed, a unit without an image)."""
    if (name, unit) not in crops:
        return None
    return f"{quote(layer_dirname(name), safe='')}/{crop_name(unit, 1)}"


def _purity_notes(plan: ReportPlan, records: list[dict]) -> list[str]:
    kept, k = plan.manifest["params"]["k"], plan.config.k
    if k > kept and any(r["purity"] is not None for r in records):
        return [f"label purity is over each unit's top {kept} (the topk table's k), not its top {k}"]
    return []


def _index_entry(layer: LayerPlan, records: list[dict], notes: list[str]) -> dict:
    """What the index page shows of a layer, and the notes of its page."""
    preview = [_crop_href(layer, r["unit"], r["tops"][0]["rank"]) for r in records if r["tops"]]
    return {
        "info": layer.info,
        "href": "layers/" + quote(layer.dirname + ".html", safe=""),
        "units": len(layer.units),
        "preview": preview[:PREVIEW_UNITS],
        "notes": [f"{layer.name}: {note}" for note in notes],
    }


def crop_name(unit: int, rank: int) -> str:
    return f"u{unit:05d}-{rank}.{crop_format()}"


def view_name(unit: int, rank: int, view: str) -> str:
    """The file of a crop's view: its crop (`u00017-1.webp`), projection (`u00017-1.projection.webp`) or
    occlusion map (`u00017-1.occlusion.webp`)."""
    return crop_name(unit, rank) if view == Show.crop.value else f"u{unit:05d}-{rank}.{view}.{crop_format()}"


def _crop_href(layer: LayerPlan, unit: int, rank: int) -> str:
    return f"layers/{quote(layer.dirname, safe='')}/{crop_name(unit, rank)}"


def unit_records(
    rows: pa.Table, units: list[int], names: dict[int, str], purity: pa.Table, histograms: dict[int, dict]
) -> list[dict]:
    """One record per unit, ascending: what its card shows (report.js draws it)."""
    by_unit: dict[int, list[dict]] = {unit: [] for unit in units}
    for row in rows.to_pylist():
        by_unit[row["unit"]].append(
            {
                "rank": row["rank"],
                "act": _number(row["act"]),
                "ties": row["ties"],
                "file": Path(row["relpath"] or row["uri"]).name,
                "label": row["label"],
            }
        )
    purities = {row["unit"]: row for row in purity.to_pylist()}
    records = []
    for unit in units:
        tops = by_unit[unit]
        share = purities.get(unit, {})
        records.append(
            {
                "unit": unit,
                "name": names.get(unit),
                "purity": _number(share.get("purity")),
                "label": share.get("dominant_label"),
                "peak": tops[0]["act"] if tops else None,
                "tops": tops,
                "hist": histograms.get(unit),
            }
        )
    return records


def _number(value: float | None) -> float | None:
    """A float JSON can carry (NaN and infinities become null), rounded to 6 significant digits."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _histograms(con, plan: ReportPlan, layer: LayerPlan) -> dict[int, dict]:
    """{unit: {"lo", "hi", "counts"}} from activations; {} for an index without them (--store topk)."""

    if plan.manifest["params"].get("store", "dense") == "topk":
        return {}
    rows = run_sql_file(con, "report_histograms", layer=layer.name, units=layer.units, bins=BINS)
    out: dict[int, dict] = {}
    for row in rows.to_pylist():
        unit = out.setdefault(
            row["unit"], {"lo": _number(row["lo"]), "hi": _number(row["hi"]), "counts": [0] * BINS}
        )
        unit["counts"][row["bin"]] = row["images"]
    return out


def _layer_data(plan: ReportPlan, layer: LayerPlan, records: list[dict], notes: list[str]) -> dict:
    """The data file of a layer page (window.ACTINDEX_LAYER)."""
    return {
        "layer": layer.name,
        "dir": quote(layer.dirname, safe=""),
        "ext": crop_format(),
        "views": [Show.crop.value] + [show.value for show in plan.shows],
        "method": plan.config.method.value,
        "k": plan.config.k,
        "tile": plan.config.tile,
        "pageSize": PAGE_SIZE,
        "labels": any(r["purity"] is not None for r in records),
        "histograms": any(r["hist"] for r in records),
        "units": records,
        "notes": list(notes),
    }


def _write_layer_html(plan: ReportPlan, layer: LayerPlan) -> None:
    info = layer.info
    page = _template("layer.html").substitute(
        title=_e(f"{layer.name} · {plan.manifest['params']['model']} · actindex report"),
        model=_e(plan.manifest["params"]["model"]),
        layer=_e(layer.name),
        facts=_facts_html(
            [
                ("type", info["type"]),
                ("units", f"{info['channels']:,}"),
                ("receptive field", rf_text(info)),
                ("feature map", f"{info['height']}×{info['width']}"),
                ("drawn", f"{len(layer.units):,} units × top {plan.config.k}"),
            ]
        ),
        data_js=_e(quote(layer.dirname + ".js", safe="")),
        footer=_footer(plan),
    )
    (plan.config.out / "layers" / f"{layer.dirname}.html").write_text(page, encoding="utf-8")


def rf_text(info: dict) -> str:
    """The receptive field as the pages show it: '147×147 px', '147×147 px + gates' where squeeze-excite
    gates computed from the whole image scale it (rf_global_context), or 'whole image' for a global one."""
    if info["rf_global"]:
        return "whole image"
    gates = " + gates" if info.get("rf_global_context") else ""
    return f"{info['rf_size_y']}×{info['rf_size_x']} px{gates}"


# ------------------------------------------------------------------------------------------ index page


def _write_index(plan: ReportPlan, pages: list[dict], errors: list[dict]) -> None:
    params = plan.manifest["params"]
    page = _template("index.html").substitute(
        title=_e(f"{params['model']} · actindex report"),
        model=_e(params["model"]),
        lede=_e(_lede(plan)),
        facts=_facts_html(run_facts(plan)),
        layers="\n".join(_layer_entry(page) for page in pages),
        errors=_errors_html(errors, plan.images[0] - plan.images[1]),
        footer=_footer(plan),
    )
    (plan.config.out / "index.html").write_text(page, encoding="utf-8")


def _lede(plan: ReportPlan) -> str:
    ok, layers, k = plan.images[1], plan.indexed_layers, plan.manifest["params"]["k"]
    weights = " · random weights" if random_weights(plan.manifest["params"]) else ""
    return f"{ok:,} images · {layers} layer{'s' * (layers != 1)} indexed · top {k} kept per unit{weights}"


def run_facts(plan: ReportPlan) -> list[tuple[str, str]]:
    """(label, value) pairs of the run, from run.json and the completion markers."""
    manifest, params = plan.manifest, plan.manifest["params"]
    images, ok = plan.images
    prep = params["preprocessing"]
    return [
        ("model", params["model"]),
        ("weights", f"{params['weights']} (sha256 {params['weights_sha256'][:12]})"),
        ("layers", ", ".join(params["layers"])),
        ("images", f"{ok:,} indexed"),
        ("errors", f"{images - ok:,} could not be decoded" if images > ok else "none"),
        ("dataset", str(manifest.get("source", "-"))),
        ("indexed", _date(manifest.get("finished") or manifest.get("started"))),
        ("run time", _duration(manifest.get("seconds"))),
        ("status", manifest.get("status", "-")),
        ("top k kept", f"{params['k']} per unit ({params.get('store', 'dense')} store)"),
        (
            "preprocessing",
            f"resize {prep['resize']}, crop {prep['crop']}, {prep['interpolation']}, decode {prep['decode']}",
        ),
        ("device", f"{params.get('device', '-')}, {params.get('precision', '-')}"),
    ]


def _date(text: str | None) -> str:
    if not text:
        return "-"
    moment = datetime.fromisoformat(text).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    return (
        f"{minutes // 60} h {minutes % 60:02d} min"
        if minutes >= 60
        else f"{minutes} min {seconds % 60:.0f} s"
    )


def _layer_entry(page: dict) -> str:
    info = page["info"]
    preview = "".join(
        f'<img src="{_e(src)}" alt="" width="64" height="64" loading="lazy">' for src in page["preview"]
    )
    return (
        f'<a class="layer" href="{_e(page["href"])}">'
        f'<span class="layer-name">{_e(info["layer"])}</span>'
        f'<span class="layer-type">{_e(info["type"])}</span>'
        f'<span class="layer-stats"><b>{info["channels"]:,}</b> channels · RF <b>{_e(rf_text(info))}</b>'
        f" · {page['units']:,} drawn</span>"
        f'<span class="preview">{preview}</span></a>'
    )


def _errors(con, plan: ReportPlan) -> list[dict]:
    if plan.images[0] == plan.images[1]:
        return []
    return run_sql_file(con, "report_errors", limit=ERRORS_SHOWN).to_pylist()


def _errors_html(errors: list[dict], total: int) -> str:
    if not errors:
        return ""
    items = "".join(f"<li><code>{_e(e['relpath'])}</code> {_e(e['error'] or '')}</li>" for e in errors)
    more = f'<p class="muted">and {total - len(errors):,} more</p>' if total > len(errors) else ""
    return (
        f'<section class="errors"><h2>Images that could not be decoded</h2><ul>{items}</ul>{more}</section>'
    )


# ------------------------------------------------------------------------------------------ shared parts


def _facts_html(facts: list[tuple[str, str]]) -> str:
    return "".join(f"<div><dt>{_e(label)}</dt><dd>{_e(value)}</dd></div>" for label, value in facts)


def _footer(plan: ReportPlan) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _e(f"actindex {__version__} · report of {plan.config.index} · made {now}")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _template(name: str) -> Template:
    return Template(_asset(name))


def _asset(name: str) -> str:
    return resources.files("actindex.queries").joinpath("report_assets", name).read_text(encoding="utf-8")


def _copy_assets(out: Path) -> None:
    """The stylesheet and script every page loads (local files: the site makes no request elsewhere)."""
    (out / "assets").mkdir(exist_ok=True)
    for name in ("report.css", "report.js"):
        (out / "assets" / name).write_text(_asset(name), encoding="utf-8")


def _site_manifest(plan: ReportPlan, units: dict[str, int]) -> dict:
    config = plan.config
    return {
        "actindex_version": __version__,
        "index": config.index,
        "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "k": config.k,
        "tile": config.tile,
        "mask": config.mask.value,
        "views": [Show.crop.value] + [show.value for show in plan.shows],
        "method": config.method.value,
        "units": units,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ unit facts


def unit_names(con: duckdb.DuckDBPyConnection, layer: str) -> dict[int, str]:
    """{unit: name} of the named units of `layer` (the `units` view: none in an index without names)."""

    return {
        row["unit"]: row["name"] for row in run_sql_file(con, "report_unit_names", layer=layer).to_pylist()
    }


def label_purity(con: duckdb.DuckDBPyConnection, layer: str, k: int) -> pa.Table:
    """Columns unit, purity, dominant_label (and the rest of the catalog's label_selectivity): how much of
    each unit's top-k shares one label, NULL where none of it has a label."""

    return label_selectivity(con, layer, k)
