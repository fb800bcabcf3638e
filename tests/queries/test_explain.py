"""Projections and occlusion maps over the index's boxes: on the planted detectors they lie on the planted
square, the grid draws them where the crops are, on a real photo the espresso unit's lies on the cup."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

import actindex
from actindex.jobs.cli import app
from actindex.pipeline.errors import InvalidInputError, UserError
from actindex.queries.db import unit_tops
from actindex.queries.explain import explained_pictures, projection_image, unit_explanations
from actindex.queries.grid import BACKGROUND
from actindex.queries.masks import OUTLINE, unit_mask_maps

TILE = 96


def _square_in_box(truth: dict, row: dict, shape: tuple[int, ...]) -> np.ndarray:
    """The planted square's pixels among those of the row's box."""
    x0, y0, x1, y1 = truth[row["relpath"]]["box"]
    square = np.zeros(shape[:2], dtype=bool)
    square[max(0, y0 - row["y0"]) : y1 - row["y0"], max(0, x0 - row["x0"]) : x1 - row["x0"]] = True
    return square


@pytest.fixture(scope="module")
def planted(planted_index):
    summary, _, truth = planted_index
    return actindex.open(summary.out), truth


@pytest.mark.parametrize("layer", ["relu2", "head"])
def test_a_guided_projection_lies_on_the_planted_square_over_exactly_the_tops_box(planted, layer):
    idx, truth = planted
    top = idx.top(layer, 0, k=3).to_pylist()
    for rank, row in enumerate(top, start=1):
        values = idx.projection(layer, 0, rank=rank, method="guided", trust_code=True)
        assert (
            values.shape == (row["y1"] - row["y0"], row["x1"] - row["x0"], 3) and values.dtype == np.float32
        )
        mass = np.abs(values).sum(axis=-1)
        inside = mass[_square_in_box(truth, row, values.shape)].sum()
        assert inside >= 0.9 * mass.sum() > 0  # measured: 96% (relu2), 99% (head)
        assert (values[..., 0][_square_in_box(truth, row, values.shape)] >= 0).all()  # red helps the unit


def test_an_occlusion_map_drops_most_on_the_planted_square(planted):
    idx, truth = planted
    row = idx.top("relu2", 0, k=1).to_pylist()[0]
    values = idx.occlusion("relu2", 0, trust_code=True)
    square = _square_in_box(truth, row, values.shape)
    assert values.shape == (row["y1"] - row["y0"], row["x1"] - row["x0"])
    assert square[np.unravel_index(np.nanargmax(values), values.shape)]
    assert np.nanmax(values) <= row["act"] * (1 + 1e-5)  # a drop is at most the whole value (ReLU)
    # a smaller window, every pixel: the corners of the box are far from the square and drop nothing
    fine = idx.occlusion("relu2", 0, window=2, stride=1, trust_code=True)
    assert fine.shape == values.shape and abs(fine[0, 0]) < 0.01 * row["act"]


def test_wrong_requests_are_answered_in_one_line(planted):
    idx, _ = planted
    with pytest.raises(InvalidInputError, match="rank 0: ranks start at 1"):
        idx.projection("relu2", 0, rank=0, trust_code=True)
    with pytest.raises(
        InvalidInputError, match="--method 'deconv' is not one of deconvnet, guided, gradient"
    ):
        idx.projection("relu2", 0, method="deconv", trust_code=True)
    with pytest.raises(InvalidInputError, match="--window 0: give at least 1 pixels"):
        idx.occlusion("relu2", 0, window=0, trust_code=True)
    with pytest.raises(UserError, match="trust"):
        idx.projection("relu2", 0)  # the planted model is python: code
    with pytest.raises(LookupError, match="rank 40"):
        idx.projection("relu2", 0, rank=40, trust_code=True)
    rows = unit_tops(idx.location, "relu2", [0], 1).rows
    with pytest.raises(InvalidInputError, match="crops are cut, not computed"):
        unit_explanations(idx.location, rows, "crop")


def test_a_projection_is_drawn_grey_where_nothing_flows_and_one_outlier_does_not_wash_it_out():
    values = np.zeros((10, 20, 3), np.float32)
    values[:5, :, 0], values[5:, :, 1] = 1.0, -0.5  # red helps, green hinders
    values[0, 0, 0] = 50.0  # one pixel far above the rest
    values[9, 19] = np.nan  # off the centre crop
    pixels = np.asarray(projection_image(values))
    assert pixels.shape == (10, 20, 3) and tuple(pixels[0, 0]) == tuple(pixels[1, 1]) == (255, 128, 128)
    assert tuple(pixels[6, 1]) == (128, 64, 128) and tuple(pixels[9, 19]) == (0, 0, 0)
    assert tuple(np.asarray(projection_image(np.zeros((2, 2, 3), np.float32)))[0, 0]) == (128, 128, 128)


def _first_tile(sheet: Image.Image, tile: int) -> np.ndarray:
    """The picture of a row-layout sheet's first tile (queries.grid: label tile + 16 wide, 2 px down)."""
    return np.asarray(sheet.convert("RGB"))[2 : 2 + tile, tile + 16 : 2 * tile + 16].astype(int)


def _square_in_tile(truth: dict, row: dict, tile: int) -> np.ndarray:
    """Where the planted square lands in a tile: the box fitted (aspect kept) and centred, as crops are."""
    width, height = row["x1"] - row["x0"], row["y1"] - row["y0"]
    fitted = ImageOps.contain(Image.new("L", (width, height)), (tile, tile)).size
    square = Image.fromarray(_square_in_box(truth, row, (height, width)).astype(np.uint8) * 255)
    placed = np.zeros((tile, tile), dtype=bool)
    left, top = (tile - fitted[0]) // 2, (tile - fitted[1]) // 2
    placed[top : top + fitted[1], left : left + fitted[0]] = np.asarray(square.resize(fitted)) > 127
    return placed


def test_grid_show_projection_draws_the_planted_square(planted, tmp_path):
    idx, truth = planted
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        app,
        [
            "grid", idx.location, "--layer", "relu2", "-u", "0", "-k", "3", "--show", "projection",
            "--method", "guided", "--tile", str(TILE), "--trust-code", "-o", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    picture = _first_tile(Image.open(out), TILE)
    square = _square_in_tile(truth, idx.top("relu2", 0, k=1).to_pylist()[0], TILE)
    away = np.abs(picture - 128).sum(axis=-1)  # away from grey: where something flows
    assert away[square].sum() >= 0.9 * away.sum()  # measured: 96%
    assert (picture[square][:, 0] > 128).mean() > 0.9  # red, positive: red helps the unit
    crops = CliRunner().invoke(
        app, ["grid", idx.location, "--layer", "relu2", "-u", "0", "-k", "3", "-o", str(tmp_path / "c.png")]
    )
    assert crops.exit_code == 0 and not np.array_equal(
        _first_tile(Image.open(tmp_path / "c.png"), TILE), picture
    )


def test_grid_show_occlusion_heats_the_square_and_a_mask_still_overlays(planted, tmp_path):
    idx, truth = planted
    sheet = idx.grid("relu2", 0, k=1, show="occlusion", mask="highlight", tile=TILE, trust_code=True)
    picture = _first_tile(sheet, TILE)
    assert (picture == OUTLINE).all(axis=-1).any()  # the mask's border over the occlusion map
    plain = _first_tile(idx.grid("relu2", 0, k=1, show="occlusion", tile=TILE, trust_code=True), TILE)
    square = _square_in_tile(truth, idx.top("relu2", 0, k=1).to_pylist()[0], TILE)
    warm = plain[..., 0] - plain[..., 2]  # jet: hot is red, cold blue
    assert warm[square].mean() > warm[~square & (plain != BACKGROUND).any(axis=-1)].mean() + 40


def test_pictures_come_per_unit_in_rank_order(planted):
    idx, _ = planted
    rows = unit_tops(idx.location, "relu2", [1, 0], 3).rows
    found = unit_explanations(idx.location, rows, "projection", trust_code=True)
    pictures = explained_pictures(rows, found.maps, "projection", TILE)
    assert list(pictures) == [("relu2", 1), ("relu2", 0)] and found.notes == []
    again = idx.projection("relu2", 0, rank=2, trust_code=True)
    assert np.array_equal(again, found.maps[4])  # unit 0, rank 2


# ----------------------------------------------------------------------------- the built-in real model

CUP = (165, 10, 430, 310)  # the cup in coffee.png (tests/queries/test_masks.py)


@pytest.fixture(scope="module")
def photos_index(skimage_photos, tmp_path_factory):
    """The built-in EfficientNet-Lite0 over three photos: coffee.png, chelsea.png, camera.png."""
    from actindex.jobs.indexing import run_index
    from actindex.jobs.spec import IndexRequest

    photos = tmp_path_factory.mktemp("explain_photos")
    for name in ("coffee.png", "chelsea.png", "camera.png"):
        (photos / name).write_bytes((skimage_photos / name).read_bytes())
    out = tmp_path_factory.mktemp("explain_index")
    request = IndexRequest(
        source=str(photos), out=str(out), model="efficientnet_lite0", layers=("blocks.3", "classifier"), k=3,
        executor="local", progress=False,
    )  # fmt: skip
    run_index(request)
    return actindex.open(out)


def test_the_espresso_units_guided_projection_lies_in_its_mask(photos_index):
    """The logit sums the whole image (global pooling): its projection draws every edge of the cup, saucer
    and spoon. Per pixel, the highlighted region holds more of it than the rest of the box."""
    idx = photos_index
    row = idx.top("classifier", 967, k=1).to_pylist()[0]
    assert row["relpath"] == "coffee.png"
    values = idx.projection("classifier", 967, method="guided")
    mass = np.nan_to_num(np.abs(values)).sum(axis=-1)
    rows = unit_tops(idx.location, "classifier", [967], 1).rows
    box = (row["x0"], row["y0"], row["x1"], row["y1"])
    share = {}
    for threshold in (0.5, 0.3):  # the default mask; a looser one
        inside = unit_mask_maps(idx.location, rows, threshold)["classifier", 967][0].mask(box)
        assert inside.shape == mass.shape
        share[threshold] = mass[inside].sum() / mass.sum(), inside.mean()
    # measured: the default mask covers 23% of the box and holds 34% of the mass (1.8 times as dense as
    # outside it); the 0.3 mask covers 43% and holds 60%: more of the mass than all the rest
    (mass_05, area_05), (mass_03, area_03) = share[0.5], share[0.3]
    assert mass_05 / area_05 > 1.3 * (1 - mass_05) / (1 - area_05)
    assert mass_03 > max(0.5, area_03)


def test_a_blocks3_units_three_methods_differ(photos_index):
    idx = photos_index
    maps = {m: idx.projection("blocks.3", 0, method=m) for m in ("deconvnet", "guided", "gradient")}
    scale = max(np.nanmax(np.abs(v)) for v in maps.values())
    for a, b in (("deconvnet", "guided"), ("guided", "gradient"), ("deconvnet", "gradient")):
        difference = np.nanmax(np.abs(maps[a] - maps[b]))
        assert difference > 0.05 * scale, (a, b)  # no method fell back to another


def test_show_several_draws_a_panel_of_each_beside_the_crops(planted):
    idx, _ = planted
    crops = np.asarray(idx.grid("relu2", 0, k=4, layout="block"))
    both = np.asarray(idx.grid("relu2", 0, k=4, layout="block", show="projection,crop", trust_code=True))
    assert both.shape == (crops.shape[0], 2 * crops.shape[1], 3)
    assert np.array_equal(both[:, crops.shape[1] :], crops)  # Zeiler & Fergus: projections, then crops
    assert not np.array_equal(both[:, : crops.shape[1]], crops)
    with pytest.raises(InvalidInputError, match="--show 'crops' is not one of crop, projection, occlusion"):
        idx.grid("relu2", 0, show="projection,crops")
    with pytest.raises(InvalidInputError, match="name each of crop, projection, occlusion at most once"):
        idx.grid("relu2", 0, show="crop,crop")
