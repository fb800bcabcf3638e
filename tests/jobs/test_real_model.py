"""The built-in EfficientNet-Lite0 (real ImageNet weights) over scikit-image's real photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.index import run_index
from jobs.spec import IndexRequest
from queries.db import connect, top_images


@pytest.fixture(scope="module")
def photo_index(skimage_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("photo_index")
    config = IndexRequest(
        source=str(skimage_photos),
        out=str(out),
        model="efficientnet_lite0",
        layers=("blocks.3", "classifier"),
        k=3,
        batch_size=8,
        executor="local",
        progress=False,
    )
    return run_index(config), connect(out)


@pytest.mark.parametrize(
    ("unit", "photo"), [(967, "coffee.png"), (282, "chelsea.png"), (872, "camera.png"), (812, "rocket.jpg")]
)
def test_class_unit_top_image_is_the_photo_of_that_class(photo_index, unit, photo):
    _, con = photo_index
    best = top_images(con, "classifier", [unit], 1).to_pylist()[0]
    assert Path(best["uri"]).name == photo


def test_every_photo_indexed_with_its_true_size(photo_index, skimage_photos):
    from PIL import Image

    summary, con = photo_index
    assert summary.failed == 0 and summary.indexed == len(list(skimage_photos.iterdir()))
    sizes = {Path(u).name: (w, h) for u, w, h in con.sql("SELECT uri, width, height FROM images").fetchall()}
    assert sizes["coffee.png"] == Image.open(skimage_photos / "coffee.png").size == (600, 400)


def test_blocks_boxes_lie_inside_their_images(photo_index):
    _, con = photo_index
    bad = con.sql(
        "SELECT count(*) FROM topk JOIN images USING (image_id) "
        "WHERE x0 < 0 OR y0 < 0 OR x1 > width OR y1 > height OR x0 >= x1 OR y0 >= y1"
    ).fetchall()[0][0]
    assert bad == 0
