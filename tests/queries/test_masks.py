"""Activation masks: on the planted detectors they are the planted squares, on a real photo the cup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actindex.pipeline.errors import InvalidInputError, MissingInputError
from actindex.pipeline.model_args import UntrustedCodeError
from actindex.pipeline.models import index_model, load_model
from actindex.pipeline.unit_maps import CamMismatchError
from actindex.queries.db import unit_tops
from actindex.queries.grid import crop_tile
from actindex.queries.masks import (
    DIM,
    OUTLINE,
    mask_notes,
    masked_tile,
    masked_tiles,
    unit_mask_maps,
)
from tests.conftest import IMAGE_H, IMAGE_W, PLANTED, PlantedNet


@pytest.fixture(scope="module")
def red_maps(planted_index):
    """Masks of the red detectors of relu1 and relu2 (unit 0) over their top 3: red0, red1, red2."""
    summary, _, truth = planted_index
    maps = {}
    for layer in ("relu1", "relu2"):
        rows = unit_tops(summary.out, layer, [0], 3).rows
        maps[layer] = unit_mask_maps(summary.out, rows, trust_code=True)[layer, 0]
    return maps, truth


def _square(truth: dict, item) -> np.ndarray:
    x0, y0, x1, y1 = truth[item.row["relpath"]]["box"]
    square = np.zeros((IMAGE_H, IMAGE_W), dtype=bool)
    square[y0:y1, x0:x1] = True
    return square


def test_the_highlight_covers_the_planted_square_and_not_the_background(red_maps):
    maps, truth = red_maps
    best = maps["relu2"][0]
    assert best.row["relpath"] == "red/red0.png" and best.reference == pytest.approx(
        best.row["act"], rel=1e-6
    )
    square, mask = _square(truth, best), best.mask()
    # relu2 blurs the pooled detector with a 5x5 bump: its half-maximum region is the square, give or take
    # a pixel at its corners and one on its right (measured: IoU 0.786, 1 background pixel of 12,144)
    assert (mask & square).sum() / (mask | square).sum() >= 0.75
    assert (mask & ~square).sum() <= 0.001 * (~square).sum()
    values = best.values()
    assert square[np.unravel_index(np.nanargmax(values), values.shape)]


def test_the_mask_of_a_detector_that_fires_on_a_block_is_that_block(red_maps):
    maps, truth = red_maps
    best = maps["relu1"][0]
    # relu1 unit 0 is 0.363 on the 6x6 model-input pixels whose 3x3 window lies inside the 8x8 red square
    # and 0 elsewhere (a window with grey in it is <= -0.09 before the ReLU). Interpolating from 0.363 to 0
    # crosses half of it halfway between the two pixels, at the block's edge: the mask is the block, 6
    # model-input pixels = 9 original pixels a side (scale 128/85 = 1.5), inside the 12-pixel square.
    mask = best.mask()
    assert mask.sum() == 81 and not (mask & ~_square(truth, best)).any()
    ys, xs = np.nonzero(mask)
    assert (xs.max() - xs.min(), ys.max() - ys.min()) == (8, 8)


def test_one_threshold_per_unit_makes_weaker_images_show_smaller_masks(red_maps):
    maps, truth = red_maps
    first, second, third = maps["relu1"]
    assert first.threshold == second.threshold == third.threshold == pytest.approx(0.5 * first.row["act"])
    # red1 (R = 200) gives 0.206 on the same block: above the 0.181 threshold, crossed closer to the block
    assert (
        0 < second.mask().sum() < first.mask().sum() and not (second.mask() & ~_square(truth, second)).any()
    )
    # red2 (R = 160) gives 0.049: a seventh of the top-1 activation, nowhere above half of it
    assert third.recomputed == pytest.approx(0.049, abs=1e-3) and not third.mask().any()


def test_a_tile_lines_up_pixel_for_pixel_with_the_grids_crop(red_maps):
    maps, _ = red_maps
    best = maps["relu2"][0]
    x0, y0, x1, y1 = best.box
    assert (x1 - x0, y1 - y0) == (19, 19)  # a 19-pixel tile shows the crop unscaled: tile pixel = original
    plain = np.asarray(crop_tile(best.row, 19), dtype=np.float64)
    tile = np.asarray(masked_tile(best, 19, "highlight"), dtype=np.float64)
    mask = best.mask(best.box)
    kept = (tile == plain).all(axis=2) | (tile == OUTLINE).all(axis=2)
    dimmed = (tile == np.round(plain * DIM)).all(axis=2)
    assert kept[mask].all() and dimmed[~mask].all() and mask.sum() > 50 and (~mask).sum() > 50


def test_heat_paints_the_square_hot_and_the_background_cold(red_maps):
    maps, _ = red_maps
    tile = np.asarray(masked_tile(maps["relu2"][0], 19, "heat"), dtype=np.int64)
    centre, corner = tile[9, 9], tile[0, 0]  # the map's peak; grey background 5 pixels off the square
    assert centre[0] > centre[2] + 150 and corner[2] > corner[0] + 40


def test_a_logit_after_max_pooling_is_refused(planted_index):
    summary, _, _ = planted_index
    rows = unit_tops(summary.out, "head", [0], 3).rows
    with pytest.raises(CamMismatchError, match="draw this layer without --mask"):
        unit_mask_maps(summary.out, rows, trust_code=True)


def test_the_index_model_needs_trust_and_the_very_weights_it_was_indexed_with(tmp_path):
    path = tmp_path / "planted.pth"
    torch.save(PlantedNet().state_dict(), path)
    loaded = load_model(PLANTED, str(path), trust_code=True)
    params = {"model": PLANTED, "weights": str(path), "weights_sha256": loaded.weights_sha256}
    assert index_model(params, trust_code=True).conv1.weight[0, 0, 0, 0].item() == pytest.approx(1 / 9)
    with pytest.raises(UntrustedCodeError, match="--trust-code"):
        index_model(params)
    changed = PlantedNet().state_dict()
    changed["conv2.bias"] += 1
    torch.save(changed, path)
    with pytest.raises(InvalidInputError, match="changed since indexing"):
        index_model(params, trust_code=True)
    path.unlink()
    with pytest.raises(MissingInputError, match="planted.pth.*not there now"):
        index_model(params, trust_code=True)


# The cup in coffee.png (600x400), hand-annotated generously: rim, body and handle, not the saucer.
CUP = (165, 10, 430, 310)


@pytest.fixture(scope="module")
def espresso(skimage_photos, tmp_path_factory):
    """The built-in EfficientNet-Lite0's espresso logit (classifier 967) over coffee.png and chelsea.png."""
    from actindex.jobs.indexing import run_index
    from actindex.jobs.spec import IndexRequest

    photos = tmp_path_factory.mktemp("cup_photos")
    for name in ("coffee.png", "chelsea.png"):
        (photos / name).write_bytes((skimage_photos / name).read_bytes())
    out = tmp_path_factory.mktemp("cup_index")
    request = IndexRequest(
        source=str(photos), out=str(out), model="efficientnet_lite0", layers=("classifier",), k=2,
        executor="local", progress=False,
    )  # fmt: skip
    run_index(request)
    rows = unit_tops(str(out), "classifier", [967], 2).rows
    return str(out), rows, unit_mask_maps(str(out), rows)


def test_the_espresso_units_mask_lies_on_the_cup(espresso):
    _, _, maps = espresso
    best = maps["classifier", 967][0]
    assert best.row["relpath"] == "coffee.png" and best.cam and best.source == "bn2"
    assert best.recomputed == pytest.approx(best.row["act"], rel=1e-4)  # the CAM's mean is the logit
    mask, values = best.mask(), best.values()
    cup = np.zeros(mask.shape, dtype=bool)
    cup[CUP[1] : CUP[3], CUP[0] : CUP[2]] = True
    assert (mask & cup).sum() >= 0.8 * mask.sum()  # measured: all of it
    assert (mask & cup).sum() >= 0.25 * cup.sum()  # and a good part of the cup (measured: 37%)
    assert cup[np.unravel_index(np.nanargmax(values), values.shape)]
    assert mask_notes(maps) == [
        "classifier has no spatial extent: its masks are class activation maps of bn2"
    ]


def test_masked_tiles_are_the_grids_tiles_in_rank_order(espresso):
    index, rows, maps = espresso
    tiles = masked_tiles(index, rows, tile=64, mode="heat")
    assert (
        list(tiles) == [("classifier", 967)] and [t.size for t in tiles["classifier", 967]] == [(64, 64)] * 2
    )
    again = masked_tile(maps["classifier", 967][0], 64, "heat")
    assert np.array_equal(np.asarray(tiles["classifier", 967][0]), np.asarray(again))


def test_an_image_changed_since_indexing_is_drawn_plain_and_said_so(planted_index, tmp_path):
    import pyarrow as pa
    from PIL import Image

    summary, _, _ = planted_index
    row = unit_tops(summary.out, "relu2", [0], 1).rows.to_pylist()[0]
    Image.new("RGB", (100, 80), (200, 10, 10)).save(tmp_path / "other.png")
    moved = {**row, "uri": str(tmp_path / "other.png"), "relpath": "red/red0.png"}
    maps = unit_mask_maps(summary.out, pa.Table.from_pylist([moved]), trust_code=True)
    item = maps["relu2", 0][0]
    assert item.fmap is None and item.recomputed is None
    assert mask_notes(maps) == [
        "relu2 unit 0, red0.png: no mask, the image is 100x80 now but was 128x96 when indexed: it changed; "
        "index it again"
    ]
    assert np.array_equal(np.asarray(masked_tile(item, 32, "highlight")), np.asarray(crop_tile(moved, 32)))
