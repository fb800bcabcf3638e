"""A hand-built CNN with planted detectors over images with known content: the index must find them."""

from __future__ import annotations

import math

import pytest

from actindex.queries.db import top_images
from tests.conftest import IMAGE_H, IMAGE_W


def _top(con, layer, unit, k=3):
    return top_images(con, layer, [unit], k).to_pylist()


def _relpath(row, folder_rows):
    return folder_rows[row["image_id"]]


@pytest.fixture(scope="module")
def relpaths(planted_index):
    _, con, _ = planted_index
    return dict(con.sql("SELECT image_id, relpath FROM images").fetchall())


def test_red_unit_ranks_red_images_first_reddest_first(planted_index, relpaths):
    _, con, _ = planted_index
    for layer in ("relu1", "relu2", "head"):
        assert [relpaths[r["image_id"]] for r in _top(con, layer, 0)] == [
            "red/red0.png",
            "red/red1.png",
            "red/red2.png",
        ]


def test_edge_unit_ranks_edge_images_first_strongest_first(planted_index, relpaths):
    _, con, _ = planted_index
    edges = ["edge/edge0.png", "edge/edge1.png", "edge/edge2.png"]
    assert [relpaths[r["image_id"]] for r in _top(con, "relu1", 1)] == edges
    # after pooling, how many cells an edge covers depends on its column: the order may change, not the set
    assert sorted(relpaths[r["image_id"]] for r in _top(con, "relu2", 1)) == edges


def test_peak_box_contains_the_red_square(planted_index, relpaths):
    _, con, truth = planted_index
    for row in _top(con, "relu2", 0):
        x0, y0, x1, y1 = truth[relpaths[row["image_id"]]]["box"]
        assert row["x0"] <= x0 and row["y0"] <= y0 and row["x1"] >= x1 and row["y1"] >= y1, row
        # relu2's receptive field is 12 model-input pixels: 18 original pixels at this scale (1.5)
        assert row["x1"] - row["x0"] <= 20 and row["y1"] - row["y0"] <= 20, row


def test_edge_box_straddles_the_edge(planted_index, relpaths):
    _, con, truth = planted_index
    for row in _top(con, "relu1", 1):
        column = truth[relpaths[row["image_id"]]]["column"]
        assert row["x0"] < column < row["x1"], row
        assert row["x1"] - row["x0"] <= 6, row  # a 3-pixel receptive field, scaled by 1.5 and rounded out


def test_global_layer_box_is_the_crop_region(planted_index):
    _, con, _ = planted_index
    # originals 128x96 -> resized 85x64 -> crop 64 at left 10: the crop covers x in [10, 74) of 85
    scale = IMAGE_W / 85
    expected = (math.floor(10 * scale), 0, math.ceil(74 * scale), IMAGE_H)
    for row in _top(con, "head", 0):
        assert (row["x0"], row["y0"], row["x1"], row["y1"]) == expected


def test_tables_hold_every_image_and_unit(planted_index):
    summary, con, truth = planted_index
    assert summary.images == summary.indexed == len(truth) == 9
    assert con.sql("SELECT count(*) FROM activations").fetchall()[0][0] == 9 * (2 + 2 + 2)
    assert con.sql("SELECT count(*) FROM topk").fetchall()[0][0] == 3 * (2 + 2 + 2)
    labels = dict(con.sql("SELECT relpath, label FROM images").fetchall())
    assert labels["red/red0.png"] == "red" and labels["plain/plain1.png"] == "plain"
    layers = con.sql(
        "SELECT layer, channels, height, width, rf_size_x, rf_jump_x FROM layers ORDER BY layer"
    ).fetchall()
    assert layers == [("head", 2, 1, 1, 64, 64), ("relu1", 2, 64, 64, 3, 1), ("relu2", 2, 32, 32, 12, 2)]
