"""`actindex demo`: the built-in EfficientNet-Lite0 over scikit-image's photos, then grids.

    run_demo(Path("actindex-demo"))   # photos/, index/, grid_classes.png, grid_blocks.png, report/

The classifier's logits are a layer like any other: unit 967 is "espresso", 282 "tiger cat",
872 "tripod"; their top images should be coffee.png, chelsea.png and camera.png.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.queries.db import connect, top_images
from actindex.queries.grid import render_grid
from actindex.queries.report import ReportConfig, plan_report, write_report

DEMO_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "color.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
    "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png", "logo.png", "horse.png",
)  # fmt: skip
CLASS_UNITS = {967: "espresso", 282: "tiger cat", 872: "tripod", 812: "space shuttle", 670: "motor scooter"}


def copy_demo_photos(folder: Path) -> list[Path]:
    """Copy the bundled scikit-image photos into `folder` (those this scikit-image ships)."""
    import skimage

    source = Path(skimage.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in DEMO_PHOTOS:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
            copied.append(folder / name)
    if not copied:
        raise FileNotFoundError(f"scikit-image ships none of the demo photos in {source}")
    return copied


# label folders for the photos, for reports that show label purity (the other photos stay unlabelled)
DEMO_LABELS = {
    "animals": ("chelsea.png", "horse.png"),
    "people": ("astronaut.png", "camera.png"),
    "vehicles": ("motorcycle_left.png", "motorcycle_right.png", "rocket.jpg"),
    "textures": ("brick.png", "grass.png", "gravel.png"),
    "text": ("page.png", "text.png"),
    "objects": ("coffee.png", "coins.png"),
}


def copy_labelled_demo_photos(folder: Path) -> list[Path]:
    """The demo photos sorted into DEMO_LABELS's folders under `folder` (an index labels them by folder)."""
    folder_of = {name: label for label, names in DEMO_LABELS.items() for name in names}
    copied = []
    for photo in copy_demo_photos(folder):
        if photo.name in folder_of:
            (folder / folder_of[photo.name]).mkdir(exist_ok=True)
            photo = photo.rename(folder / folder_of[photo.name] / photo.name)
        copied.append(photo)
    return copied


def _report(index: str, out: Path) -> Path:
    """The report of the class units and of blocks.3's first 8 units, masks highlighted: its index.html."""

    units = (*CLASS_UNITS, *range(8))  # blocks.3 has 80 units: it draws 0-7
    summary = write_report(plan_report(ReportConfig(index=index, out=out, units=units, k=9)))
    return summary.out / "index.html"


def run_demo(out: Path, executor: str = "ray", progress: bool = True, echo: Callable[[str], None] = print):
    photos = copy_demo_photos(out / "photos")
    echo(f"indexing {len(photos)} scikit-image photos with the built-in efficientnet_lite0")
    request = IndexRequest(
        source=str(out / "photos"),
        out=str(out / "index"),
        model="efficientnet_lite0",
        layers=("blocks.3", "classifier"),
        k=9,
        batch_size=8,
        executor=executor,
        progress=progress,
        overwrite=True,
    )
    summary = run_index(request)
    echo(f"{summary.indexed} indexed, {summary.failed} failed, {summary.activation_rows:,} activation rows")
    con = connect(request.out)
    classes = top_images(con, "classifier", list(CLASS_UNITS), k=4)
    render_grid(classes, tile=128).save(out / "grid_classes.png")
    render_grid(top_images(con, "blocks.3", list(range(8)), k=6), tile=96).save(out / "grid_blocks.png")
    for unit in CLASS_UNITS:
        best = classes.filter(classes.column("unit").to_numpy() == unit).to_pylist()[0]
        name = best["name"]  # the unit's class, from the index's units table (CLASS_UNITS says the same)
        echo(f"classifier unit {unit} ({name}): top image {Path(best['uri']).name} (logit {best['act']:.2f})")
    site = _report(request.out, out / "report")
    echo(f"grids: {out / 'grid_classes.png'}, {out / 'grid_blocks.png'}; index: {request.out}")
    echo(f"report: {site.resolve().as_uri()} (open it in a browser)")
    echo(f'try: actindex sql {request.out} "SELECT layer, count(*) FROM activations GROUP BY 1"')
    return summary
