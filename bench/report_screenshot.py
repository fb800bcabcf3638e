"""The screenshot of a report's layer page in docs/units.md, made the way a user would see it: in Chromium.

    python -m bench.report_screenshot --out docs/images/report_layer.png

Indexes scikit-image's photos (in jobs/demo.py's label folders) with the built-in efficientnet_lite0 (one
process, no Ray), writes `actindex report` of one layer (k=9, activation masks highlighted; `--layer`, by
default the classifier, whose units are named by their ImageNet classes), opens its page in Debian's headless
chromium through Playwright (the dev extra), sorted by peak activation, waits for the crops and saves the
window, reduced to 256 colours to keep the file small. `--work` keeps the index and the site.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

WINDOW = {"width": 1280, "height": 980}


def build_site(work: Path, layer: str) -> Path:
    """Index the labelled demo photos into `work`/index and write the report of `layer` to `work`/site."""
    from actindex.jobs.demo import copy_labelled_demo_photos
    from actindex.jobs.indexing import run_index
    from actindex.jobs.spec import IndexRequest
    from actindex.queries.report import ReportConfig, plan_report, write_report

    copy_labelled_demo_photos(work / "photos")
    request = IndexRequest(
        source=str(work / "photos"), out=str(work / "index"), model="efficientnet_lite0", overwrite=True,
        layers=("blocks.3", "classifier"), k=9, batch_size=8, executor="local", progress=False,
    )  # fmt: skip
    run_index(request)
    config = ReportConfig(index=request.out, out=work / "site", layers=(layer,), k=9)  # masks: highlight
    write_report(plan_report(config))
    return work / "site"


def screenshot(page_file: Path, out: Path, fragment: str = "sort=peak") -> None:
    """Save the window showing `page_file` (a layer page) once its visible crops have loaded."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport=WINDOW)
        page.goto(f"{page_file.resolve().as_uri()}#{fragment}")
        visible = "[...document.querySelectorAll('.card img')].slice(0, 36)"  # three rows of cards
        page.wait_for_function(f"{visible}.every(i => i.complete && i.naturalWidth)")
        page.screenshot(path=str(out))
        browser.close()
    Image.open(out).convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report_screenshot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--work", type=Path, default=None, help="keep the photos, index and site here")
    parser.add_argument("--layer", default="classifier", help="the layer page: classifier, blocks.3")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        site = build_site(args.work or Path(temporary), args.layer)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(site / "layers" / f"layer={args.layer}.html", args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
