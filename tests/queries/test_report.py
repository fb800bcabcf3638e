"""`actindex report`: the site it writes, checked in a real headless Chromium (Playwright), and its CLI.

One index (the built-in EfficientNet-Lite0 over scikit-image's photos, most of them in the label folders of
jobs/demo.py's DEMO_LABELS) and one report of it (classifier units 0-109, 282 and 967; blocks.3 the 80 of
those it has; k=3) are built once for the module; every browser check runs against that site in one browser.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from actindex.jobs.cli import app
from actindex.jobs.demo import DEMO_LABELS, copy_labelled_demo_photos
from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.queries.db import connect, top_images
from actindex.queries.report import BINS, PAGE_SIZE, label_purity, rf_text, select_layers, unit_names
from tests.jobs.test_cli import invoke

K = 3
UNITS = "0-109,282,967"  # classifier: 112 units, more than one page; blocks.3 (80 units): 0-79
CLASSIFIER_UNITS = [*range(110), 282, 967]


@pytest.fixture(scope="module")
def labelled_index(tmp_path_factory) -> Path:
    photos = tmp_path_factory.mktemp("labelled_photos")
    copy_labelled_demo_photos(photos)
    (photos / "text" / "broken.jpg").write_bytes(b"not a JPEG")  # an error the index page lists
    out = tmp_path_factory.mktemp("labelled_index")
    request = IndexRequest(
        source=str(photos), out=str(out), model="efficientnet_lite0", layers=("blocks.3", "classifier"),
        k=K, batch_size=8, executor="local", progress=False,
    )  # fmt: skip
    assert run_index(request).failed == 1
    return out


@pytest.fixture(scope="module")
def site(labelled_index, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "site"
    # projections are tested on planted nets (test_report_views.py): here they would cost minutes
    result = invoke(
        "report",
        labelled_index,
        "--out",
        out,
        "--units",
        UNITS,
        "--k",
        K,
        "--no-progress",
        "--no-projections",
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def layer_url(site_dir: Path, layer: str) -> str:
    return (site_dir / "layers" / f"layer={layer}.html").as_uri()


def card_units(tab) -> list[int]:
    return [int(u) for u in tab.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.unit)")]


def load_every_crop(tab) -> list[int]:
    """Make the page's lazy crops load (as scrolling to them would) and return their naturalWidth."""
    return tab.evaluate(
        """async () => {
            const images = [...document.querySelectorAll('.card img')];
            images.forEach(img => { img.loading = 'eager'; });
            await Promise.all(images.map(img => img.decode().catch(() => null)));
            return images.map(img => img.naturalWidth);
        }"""
    )


def layer_data(site_dir: Path, layer: str) -> dict:
    text = (site_dir / "layers" / f"layer={layer}.js").read_text(encoding="utf-8")
    return json.loads(text.removeprefix("window.ACTINDEX_LAYER = ").rstrip().removesuffix(";"))


# ------------------------------------------------------------------------------------------ the CLI


def test_report_says_what_it_wrote(site):
    out, output = site
    assert f"wrote {out / 'index.html'}: blocks.3 80 units, classifier 112 units; 576 crops in" in output
    assert "note: blocks.3: 32 units not drawn (it has units 0-79)" in output
    names = [p.name for p in (out / "layers" / "layer=classifier").iterdir()]
    assert len(names) == 112 * K and not any(".projection." in name for name in names)
    assert json.loads((out / "report.json").read_text())["units"] == {"blocks.3": 80, "classifier": 112}


def test_an_unknown_layer_is_one_line_naming_the_indexed_ones(labelled_index, tmp_path):
    result = invoke("report", labelled_index, "--out", tmp_path / "site", "--layers", "blocks.9")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: layer 'blocks.9' is not in this index; indexed layers: blocks.3, classifier"
    )
    assert not (tmp_path / "site").exists()


def test_units_no_layer_has_and_a_bad_mask_level_are_refused_before_drawing(labelled_index, tmp_path):
    result = invoke("report", labelled_index, "--out", tmp_path / "a", "--units", "1000")
    assert result.exit_code == 2 and "unit 1000 is out of range of every layer chosen" in result.output
    result = invoke("report", labelled_index, "--out", tmp_path / "b", "--mask-threshold", "0", "-u", "0")
    assert result.exit_code == 2 and "--mask-threshold 0.0: give a fraction in (0, 1]" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_folder_that_is_not_a_report_is_never_touched(labelled_index, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = invoke("report", labelled_index, "--out", tmp_path, "--units", "0")
    assert result.exit_code == 2 and "not an actindex report" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_report_replaces_the_previous_one(labelled_index, tmp_path):
    args = ("report", labelled_index, "--out", tmp_path / "site", "--layers", "classifier", "--no-progress")
    assert invoke(*args, "--units", "0-2", "--k", "1").exit_code == 0
    assert invoke(*args, "--units", "5", "--k", "2").exit_code == 0
    crops = sorted(p.name for p in (tmp_path / "site" / "layers" / "layer=classifier").iterdir())
    assert sorted(c.split(".")[0] for c in crops if ".projection." not in c) == ["u00005-1", "u00005-2"]
    assert len(crops) == 4  # and their projections


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "200"})  # no name cut short
    assert result.exit_code == 0
    options = (
        "--out",
        "--layers",
        "--units",
        "--k",
        "--tile",
        "--mask",
        "--mask-threshold",
        "--workers",
        "--projections",
        "--no-projections",
        "--method",
        "--occlusion",
        "--window",
        "--stride",
    )
    for option in (*options, "--no-progress", "--progress-every"):
        assert option in result.output


# ------------------------------------------------------------------------------------------ the data


def test_histograms_count_every_image_in_the_right_bin(site, labelled_index):
    out, _ = site
    data = layer_data(out, "blocks.3")
    acts = connect(labelled_index).sql(
        "SELECT unit, list(act ORDER BY image_id) FROM activations WHERE layer = 'blocks.3' GROUP BY unit"
    )
    for unit, values in acts.fetchall():
        hist = data["units"][unit]["hist"]
        values = np.asarray(values, dtype=np.float64)
        counts, _ = np.histogram(values, bins=BINS, range=(values.min(), values.max()))
        assert hist["counts"] == counts.tolist(), unit
        assert hist["lo"] == pytest.approx(values.min(), rel=1e-5)


def test_names_come_from_the_units_view(labelled_index):
    con = connect(labelled_index)
    names = unit_names(con, "classifier")
    assert len(names) == 1000 and names[282] == "tiger cat" and names[967] == "espresso"
    assert unit_names(con, "blocks.3") == {}


def test_purity_is_the_share_of_the_commonest_label_in_the_top_k(labelled_index):
    con = connect(labelled_index)
    rows = top_images(con, "classifier", CLASSIFIER_UNITS, K).to_pylist()
    labels: dict[int, list] = {}
    for row in rows:
        labels.setdefault(row["unit"], []).append(row["label"])
    table = label_purity(con, "classifier", K).to_pylist()
    assert len(table) == 1000
    got = {row["unit"]: row["purity"] for row in table if row["unit"] in labels}
    assert got == pytest.approx({u: share_of_commonest(ls) for u, ls in labels.items()})
    assert {row["dominant_label"] for row in table} - {None} <= set(DEMO_LABELS)


# ------------------------------------------------------------------------------------------ in Chromium


def test_index_page_lists_the_layers_and_links_to_their_pages(site, page):
    out, _ = site
    page.goto((out / "index.html").as_uri())
    assert page.inner_text("h1") == "efficientnet_lite0"
    assert page.locator(".layer-name").all_inner_texts() == ["blocks.3", "classifier"]
    facts = dict(
        zip(
            page.locator(".facts dt").all_inner_texts(),
            page.locator(".facts dd").all_inner_texts(),
            strict=True,
        )
    )
    assert facts["IMAGES"] == "20 indexed" and facts["ERRORS"] == "1 could not be decoded"
    errors = connect(site_index(out)).sql("SELECT relpath, error FROM images WHERE error IS NOT NULL")
    [(relpath, error)] = errors.fetchall()
    assert relpath == "text/broken.jpg" and page.inner_text(".errors li") == f"{relpath} {error}"
    assert facts["LAYERS"] == "blocks.3, classifier"
    page.locator(".layer", has_text="classifier").click()
    assert page.url == layer_url(out, "classifier").replace("=", "%3D")
    assert page.inner_text("h1") == "classifier"
    page.click(".kicker a")
    assert page.locator(".layer").count() == 2


def test_a_card_per_unit_each_with_its_k_crops_loaded(site, page):
    out, _ = site
    page.goto(layer_url(out, "blocks.3"))
    assert card_units(page) == list(range(80))
    assert page.locator(".card .crop img").count() == 80 * K
    assert all(width == 128 for width in load_every_crop(page))
    first = page.locator(".card").first
    top = top_images(connect(site_index(out)), "blocks.3", [0], K).to_pylist()
    titles = first.locator("img").evaluate_all("images => images.map(i => i.title)")
    assert [t.split("\n")[1].split(" · ")[0] for t in titles] == [Path(r["relpath"]).name for r in top]
    assert titles[0].startswith(f"#1 · activation {top[0]['act']:.4g}")


def site_index(out: Path) -> str:
    return json.loads((out / "report.json").read_text())["index"]


def test_named_units_show_their_names_and_others_none(site, page):
    out, _ = site
    page.goto(layer_url(out, "classifier"))
    assert page.inner_text("#unit-0 .unit-name") == "tench"  # every classifier unit has its class
    page.goto(layer_url(out, "classifier") + "#find=tiger cat")
    assert card_units(page) == [282] and page.inner_text("#unit-282 .unit-name") == "tiger cat"
    page.goto(layer_url(out, "classifier") + "#find=967")
    assert page.inner_text("#unit-967 .unit-name") == "espresso"
    page.goto(layer_url(out, "blocks.3"))
    names = page.locator(".card .unit-name").all_inner_texts()
    assert len(card_units(page)) == 80 and not any(name.strip() for name in names)  # a conv layer: no names


def test_sorting_by_purity_and_by_peak_activation(site, labelled_index, page):
    out, _ = site
    con = connect(labelled_index)
    rows = top_images(con, "blocks.3", list(range(80)), K).to_pylist()
    labels: dict[int, list] = {}
    for row in rows:
        labels.setdefault(row["unit"], []).append(row["label"])
    purity = {u: share_of_commonest(ls) for u, ls in labels.items()}
    peaks = dict(
        con.sql("SELECT unit, max(act) FROM activations WHERE layer = 'blocks.3' GROUP BY 1").fetchall()
    )

    page.goto(layer_url(out, "blocks.3"))
    page.select_option("#sort", "purity")
    by_purity = card_units(page)
    assert by_purity == sorted(purity, key=lambda u: (purity[u] is None, -round(purity[u] or 0, 6), u))
    assert by_purity != list(range(80)) and len(set(purity.values())) > 2  # the sort did reorder
    page.select_option("#sort", "peak")
    assert card_units(page) == sorted(peaks, key=lambda u: (-peaks[u], u))
    assert page.url.endswith("#sort=peak")


def share_of_commonest(labels: list[str | None]) -> float | None:
    """The share of `labels` that is the commonest label (None where none is labelled)."""
    counted = Counter(label for label in labels if label is not None).most_common(1)
    return counted[0][1] / len(labels) if counted else None


def test_a_layer_of_more_units_than_a_page_is_paged_with_lazy_crops(site, page):
    out, _ = site
    page.goto(layer_url(out, "classifier"))
    assert card_units(page) == CLASSIFIER_UNITS[:PAGE_SIZE]
    assert page.inner_text("#page") == "Page 1 of 2 · units 1–100"
    assert set(page.eval_on_selector_all(".card img", "images => images.map(i => i.loading)")) == {"lazy"}
    page.wait_for_function("() => document.querySelector('.card img').naturalWidth > 0")  # the crops in view
    widths = page.eval_on_selector_all(".card img", "images => images.map(i => i.naturalWidth)")
    assert widths[0] == 128 and widths[-1] == 0  # the crops far below the window are not loaded yet
    page.click("#next")
    assert card_units(page) == CLASSIFIER_UNITS[PAGE_SIZE:]
    assert page.inner_text("#page") == "Page 2 of 2 · units 101–112"
    assert all(width == 128 for width in load_every_crop(page))
    assert page.is_disabled("#next") and not page.is_disabled("#prev")


def test_no_request_leaves_the_sites_files(site, page):
    out, _ = site
    page.goto((out / "index.html").as_uri())
    page.goto(layer_url(out, "blocks.3") + "#sort=purity")
    load_every_crop(page)
    page.goto(layer_url(out, "classifier") + "#page=2")
    load_every_crop(page)
    assert len(page.requests) > 80 * K  # pages, stylesheet, scripts, data and crops
    assert [url for url in page.requests if not url.startswith("file://")] == []


def test_a_receptive_field_scaled_by_gates_says_so():
    field = {"rf_global": False, "rf_size_y": 67, "rf_size_x": 51, "rf_global_context": False}
    assert rf_text(field) == "67×51 px"
    assert rf_text({**field, "rf_global_context": True}) == "67×51 px + gates"  # squeeze-excite
    assert rf_text({**field, "rf_global": True}) == "whole image"


def test_layer_globs_mean_what_they_mean_to_actindex_index():
    indexed = ["conv1", "layer1", "layer1.0", "layer1.0.conv1", "fc"]
    assert select_layers(indexed, ["layer*"]) == ["layer1"]  # '*' stays within one dotted name
    assert select_layers(indexed, ["layer1.**"]) == ["layer1.0", "layer1.0.conv1"]  # '**' crosses dots
    assert select_layers(indexed, ["fc", "conv?"]) == ["conv1", "fc"]  # in index order
    assert select_layers(indexed, None) == indexed
    with pytest.raises(LookupError, match="'layer9' is not in this index; indexed layers: conv1, layer1"):
        select_layers(indexed, ["layer9"])
