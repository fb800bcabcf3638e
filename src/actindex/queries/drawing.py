"""A report's crops on all cores: every original decoded once for all of its crops, the crops cut, masked
and saved in parallel.

    crops = [Crop(Path("site/layers/layer=fc/u00282-1.webp"), row, mask=item), ...]   # item: a MaskMap
    with ThreadPoolExecutor(4) as pool:
        draw_crops(crops, Drawing(tile=128, mode=Mask.highlight, decode="fast"), pool, advance=print)

The crops of one original are drawn together: it is read and decoded when the first of its tasks starts,
shared by its tasks (at most CROPS_PER_TASK crops each, so that progress and the cores stay busy when one
photo is in the top-k of most units), and let go when the last one ends; an original is kept only while its
crops are drawn, so a report holds a few of them at a time, whatever its size. A crop box that comes
again (a global layer's box is the whole photo, the same for every unit) is cut and fitted once.

Threads, not processes: Pillow lets go of the GIL while it decodes, resizes and encodes, and numpy while it
multiplies the map into the crop's pixels (pipeline.upsample); what holds it (numpy's small steps, Python
around them) is about a tenth of a masked crop (bench/report_speed.py measures it). Each file is a function
of its row and map alone: the pool's size and the order the tasks run in change nothing in it.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from actindex.queries.grid import MISSING, fit_crop, place_in_tile, read_original
from actindex.queries.masks import MaskMap, mask_tile

CROPS_PER_TASK = 32  # crops per task: one original's crops are spread over tasks this size


@dataclass(frozen=True)
class Crop:
    """One crop file of a report."""

    file: Path  # where it is saved (crop_format's suffix)
    row: dict  # its top-k row (queries/top_images.sql): uri, box
    mask: MaskMap | None = None  # the unit's map on it, drawn over it; None: the plain crop


@dataclass(frozen=True)
class Drawing:
    """How every crop is drawn."""

    tile: int  # side in pixels
    mode: str  # a mask's style (queries.masks.Mask: highlight or heat), for crops with a mask
    decode: str  # how the index decoded the originals (Preprocessing.decode): the boxes' frame


def draw_crops(crops: list[Crop], drawing: Drawing, pool: Executor, advance: Callable[[int], None]) -> None:
    """Draw and save `crops` on `pool`, calling `advance(n)` as each n are saved."""
    tasks_of = _tasks(crops)
    boxes = Counter((crop.row["uri"], _box(crop.row)) for crop in crops)
    repeated: dict[str, set[tuple]] = {}
    for (uri, box), count in boxes.items():
        if count > 1:
            repeated.setdefault(uri, set()).add(box)
    originals = _Originals(drawing.decode, Counter(uri for uri, _ in tasks_of), repeated)
    futures = [pool.submit(_draw_task, originals, uri, part, drawing) for uri, part in tasks_of]
    try:
        for future in as_completed(futures):
            advance(future.result())
    except BaseException:
        for future in futures:  # a failure (a full disk) stops the drawing; what runs ends on its own
            future.cancel()
        raise


def _tasks(crops: list[Crop]) -> list[tuple[str, list[Crop]]]:
    """(uri, crops) tasks: each original's crops, in parts of at most CROPS_PER_TASK, originals in the
    order they first come (a task's neighbours share its original, so few are held at once)."""
    by_uri: dict[str, list[Crop]] = {}
    for crop in crops:
        by_uri.setdefault(crop.row["uri"], []).append(crop)
    return [
        (uri, part[i : i + CROPS_PER_TASK])
        for uri, part in by_uri.items()
        for i in range(0, len(part), CROPS_PER_TASK)
    ]


def _draw_task(originals: _Originals, uri: str, crops: list[Crop], drawing: Drawing) -> int:
    original = originals.take(uri)
    try:
        for crop in crops:
            save_crop(_tile(original, crop, drawing), crop.file)
    finally:
        originals.give_back(uri)
    return len(crops)


def _tile(original: _Original, crop: Crop, drawing: Drawing) -> Image.Image:
    """The crop's tile: as queries.grid.crop_tile draws it, or queries.masks.masked_tile with a mask."""
    fitted = original.fitted(_box(crop.row), drawing.tile)
    if fitted is None:  # gone or broken since indexing
        return Image.new("RGB", (drawing.tile, drawing.tile), MISSING)
    if crop.mask is None:
        return place_in_tile(fitted, drawing.tile)
    return mask_tile(fitted, crop.mask, drawing.tile, drawing.mode)


def _box(row: dict) -> tuple[int, int, int, int]:
    return (row["x0"], row["y0"], row["x1"], row["y1"])


class _Originals:
    """The originals the running tasks cut crops from: each opened when its first task takes it and let go
    when its last task gives it back."""

    def __init__(self, decode: str, tasks: Counter, repeated: dict[str, set[tuple]]):
        self.decode, self.tasks = decode, tasks  # uri -> tasks that have not given it back
        self.repeated = repeated  # uri -> boxes of more than one crop: fitted once, kept with the original
        self.held: dict[str, _Original] = {}
        self.lock = threading.Lock()

    def take(self, uri: str) -> _Original:
        with self.lock:
            if uri not in self.held:
                self.held[uri] = _Original(uri, self.decode, self.repeated.get(uri, set()))
            return self.held[uri]

    def give_back(self, uri: str) -> None:
        with self.lock:
            self.tasks[uri] -= 1
            if self.tasks[uri] == 0:
                del self.held[uri]


class _Original:
    """One original, decoded by the first task that needs its pixels (the others wait for it), and the
    fitted crops of its boxes that come more than once."""

    def __init__(self, uri: str, decode: str, repeated: set[tuple]):
        self.uri, self.decode, self.repeated = uri, decode, repeated
        self.lock = threading.Lock()
        self.fits: dict[tuple, Image.Image | None] = {}

    @functools.cached_property
    def image(self) -> Image.Image | None:
        """The decoded original; None where it is gone or broken since indexing (grey tiles)."""
        try:
            return read_original(self.uri, self.decode)
        except Exception:  # noqa: BLE001 - as queries.grid.open_crop: the crop is drawn grey
            return None

    def fitted(self, box: tuple[int, int, int, int], tile: int) -> Image.Image | None:
        """The box cut out and fitted into the tile (queries.grid.fit_crop), once per box and tile."""
        if box in self.fits:
            return self.fits[box]
        with self.lock:  # one decode, however many tasks ask at once
            image = self.image
        fitted = None if image is None else fit_crop(image.crop(box), tile)
        if box in self.repeated:
            self.fits[box] = fitted
        return fitted


def save_crop(image: Image.Image, path: Path) -> None:
    if crop_format() == "webp":
        image.save(path, "WEBP", quality=82, method=4)
    else:
        image.save(path, "PNG")


@functools.cache
def crop_format() -> str:
    """WebP where this Pillow writes it (a third of PNG's size for photos), else PNG."""
    from PIL import features

    return "webp" if features.check("webp") else "png"
