"""The report's views and links, in Chromium: cards switch between crops, projections and occlusion maps
drawn as files beside the crops, and list the units that build them ("built from") and those they feed, each
link opening the other layer's page at that unit's card, on whichever page of cards holds it.

One planted index (tests/conftest.py's PlantedNet: relu2 unit u is built from relu1 unit u alone, head unit
u from relu2 unit u) with its contributions (relu2 from relu1, head from relu2), and three reports of it:
every layer with projections, one card per page so that a link must change pages; relu2 alone with occlusion
maps and no projections, the sources' top-1 crops drawn for the cards; head alone with crops only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actindex.jobs.contributions import ContributionsRequest, run_contributions
from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.queries import report
from actindex.queries.drawing import crop_format
from tests.conftest import PLANTED, PLANTED_PREP
from tests.jobs.test_cli import invoke
from tests.queries.test_report import card_units, layer_data, layer_url, load_every_crop

K, TILE = 3, 64
EXT = crop_format()


@pytest.fixture(scope="module")
def linked_index(planted_dataset, tmp_path_factory) -> Path:
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("report_links") / "idx"
    run_index(IndexRequest(
        source=str(folder), out=str(out), model=PLANTED, layers=("relu1", "relu2", "head"),
        preprocessing=PLANTED_PREP, trust_code=True, k=K, shard_size=4, executor="local", progress=False,
    ))  # fmt: skip
    for layer in ("relu2", "head"):  # from the indexed layer below
        request = ContributionsRequest(
            index=str(out), layer=layer, k=K, executor="local", trust_code=True, progress=False
        )
        run_contributions(request)
    return out


def write_site(index: Path, out: Path, *args) -> str:
    result = invoke("report", index, "--out", out, "--k", K, "--tile", TILE, "--trust-code", "--no-progress",
                    *args)  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def site(linked_index, tmp_path_factory) -> tuple[Path, str]:
    """Every layer, projections (the default), one card per page."""
    out = tmp_path_factory.mktemp("report_views") / "site"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "PAGE_SIZE", 1)
        return out, write_site(linked_index, out)


@pytest.fixture(scope="module")
def occlusion_site(linked_index, tmp_path_factory) -> Path:
    """relu2 alone: occlusion maps, no projections; relu1's units are not drawn."""
    out = tmp_path_factory.mktemp("report_occlusion") / "site"
    write_site(linked_index, out, "--layers", "relu2", "--no-projections", "--occlusion", "--window", "4")
    return out


def files(site_dir: Path, layer: str, view: str) -> list[str]:
    """The names of a layer's files of one view (crop, projection, occlusion), sorted."""
    names = sorted(p.name for p in (site_dir / "layers" / f"layer={layer}").iterdir())
    if view == "crop":
        return [n for n in names if n.count(".") == 1]
    return [n for n in names if n.endswith(f".{view}.{EXT}")]


# ------------------------------------------------------------------------------------------ the files


def test_each_crop_has_its_projection_and_no_occlusion_map_unless_asked(site):
    out, output = site
    assert "; 18 crops, 18 projections in " in output  # 3 layers x 2 units x k 3
    plan = output.splitlines()[0]
    assert plan.startswith(
        "actindex: drawing 6 units (relu1 2, relu2 2, head 2): 18 crops with highlight masks"
    )
    assert "; 18 projections (deconvnet); about " in plan and ", --no-projections (about " in plan
    for layer in ("relu1", "relu2", "head"):
        crops = files(out, layer, "crop")
        assert len(crops) == 2 * K
        assert files(out, layer, "projection") == sorted(
            c.replace(f".{EXT}", f".projection.{EXT}") for c in crops
        )
        assert files(out, layer, "occlusion") == []
    assert layer_data(out, "relu2")["views"] == ["crop", "projection"]
    folder = out / "layers" / "layer=relu2"
    assert (folder / f"u00000-1.projection.{EXT}").read_bytes() != (folder / f"u00000-1.{EXT}").read_bytes()


def test_occlusion_maps_only_with_the_option_and_the_sources_top_crops_drawn(occlusion_site):
    data = layer_data(occlusion_site, "relu2")
    assert data["views"] == ["crop", "occlusion"]
    crops = files(occlusion_site, "relu2", "crop")
    assert files(occlusion_site, "relu2", "occlusion") == [
        c.replace(f".{EXT}", f".occlusion.{EXT}") for c in crops
    ]
    assert files(occlusion_site, "relu2", "projection") == []
    # relu1 has no page: its units' top-1 crops are drawn for relu2's "built from", without links
    assert files(occlusion_site, "relu1", "crop") == [f"u00000-1.{EXT}", f"u00001-1.{EXT}"]
    assert not (occlusion_site / "layers" / "layer=relu1.html").exists()
    first = data["units"][1]["from"][0]
    assert (first["layer"], first["unit"], first["href"]) == ("relu1", 1, None)
    assert first["img"] == f"layer%3Drelu1/u00001-1.{EXT}"


def test_window_and_stride_without_occlusion_are_refused(linked_index, tmp_path):
    result = invoke("report", linked_index, "--out", tmp_path / "site", "--window", "4", "--trust-code")
    assert result.exit_code == 2 and "--window and --stride shape the occlusion maps: add --occlusion" in (
        result.output
    )
    assert not (tmp_path / "site").exists()


def test_the_cards_list_the_planted_wiring(site, linked_index):
    out, _ = site
    relu2 = layer_data(out, "relu2")["units"]
    for unit in (0, 1):  # relu2 unit u is built from relu1 unit u alone, and feeds head unit u
        built = relu2[unit]["from"]
        assert [(b["layer"], b["unit"]) for b in built] == [("relu1", unit), ("relu1", 1 - unit)]
        assert built[0]["share"] == pytest.approx(1.0) and built[1]["share"] == pytest.approx(0.0, abs=1e-6)
        assert built[0]["href"] == f"layer%3Drelu1.html#unit={unit}"
        assert built[0]["img"] == f"layer%3Drelu1/u{unit:05d}-1.{EXT}"  # relu1's own top-1 crop, reused
        assert relu2[unit]["feeds"][0]["href"] == f"layer%3Dhead.html#unit={unit}"
    assert layer_data(out, "relu1")["units"][0]["from"] == []  # nothing computed below relu1


# ------------------------------------------------------------------------------------------ in Chromium


def test_switching_to_projections_loads_them_and_back(site, page):
    out, _ = site
    page.goto(layer_url(out, "relu2"))
    assert page.locator("#views button").all_inner_texts() == ["Crops", "Projections"]
    page.click("#views button[data-view=projection]")
    sources = page.eval_on_selector_all(".card .crop img", "images => images.map(i => i.src)")
    assert len(sources) == K and all(
        src.endswith(f"-{r}.projection.{EXT}") for r, src in enumerate(sources, 1)
    )
    assert load_every_crop(page) == [TILE] * (K + 2)  # its projections and its 2 sources' crops
    assert page.url.endswith("#view=projection")
    page.click("#next")  # the next page of cards shows projections too
    assert card_units(page) == [1]
    assert page.eval_on_selector(".card .crop img", "i => i.src").endswith(f"u00001-1.projection.{EXT}")
    page.click("#views button[data-view=crop]")
    assert page.eval_on_selector(".card .crop img", "i => i.src").endswith(f"u00001-1.{EXT}")


def test_a_built_from_link_opens_the_lower_layer_at_that_unit_on_its_page(site, page):
    out, _ = site
    page.goto(layer_url(out, "relu2") + "#page=2")
    assert card_units(page) == [1]
    page.locator("#unit-1 .related-from a").first.click()
    page.wait_for_url("**/layer%3Drelu1.html#*")
    assert page.inner_text("h1") == "relu1"
    assert card_units(page) == [1] and page.inner_text("#page").startswith("Page 2 of 2")  # not page 1
    assert page.eval_on_selector_all(".card.focus", "cards => cards.map(c => c.dataset.unit)") == ["1"]
    box = page.locator("#unit-1").bounding_box()
    assert 0 <= box["y"] < page.viewport_size["height"]  # in view
    # and up again: relu1 unit 1 feeds relu2 unit 1
    page.locator("#unit-1 .related-feeds a").first.click()
    page.wait_for_url("**/layer%3Drelu2.html#*")
    assert card_units(page) == [1] and page.eval_on_selector(".card.focus", "c => c.dataset.unit") == "1"


def test_an_address_with_a_unit_opens_its_card_and_a_bad_one_changes_nothing(site, page):
    out, _ = site
    page.goto(layer_url(out, "head") + "#find=0&unit=1")  # the search hid it: it is shown anyway
    assert card_units(page) == [1] and page.input_value("#find") == ""
    page.goto(layer_url(out, "head") + "#unit=7")  # no such unit: the first page, nothing highlighted
    assert card_units(page) == [0] and page.locator(".card.focus").count() == 0


def test_every_request_stays_on_the_sites_files(site, occlusion_site, page):
    out, _ = site
    page.goto(layer_url(out, "relu2"))
    page.click("#views button[data-view=projection]")
    load_every_crop(page)
    page.locator("#unit-0 .related-from a").first.click()
    page.wait_for_url("**/layer%3Drelu1.html#*")
    load_every_crop(page)
    page.goto(layer_url(occlusion_site, "relu2") + "#view=occlusion")
    assert page.eval_on_selector(".card .crop img", "i => i.src").endswith(f".occlusion.{EXT}")
    assert all(width == TILE for width in load_every_crop(page))
    assert len(page.requests) > 10
    assert [url for url in page.requests if not url.startswith("file://")] == []


def test_a_report_of_crops_alone_offers_no_switch(linked_index, tmp_path, page):
    out = tmp_path / "site"
    write_site(linked_index, out, "--layers", "head", "--no-projections", "--mask", "none")
    assert files(out, "head", "projection") == [] and layer_data(out, "head")["views"] == ["crop"]
    page.goto(layer_url(out, "head"))
    assert page.locator("#views").is_hidden() and page.locator("#views button").count() == 0
