"""The built-in EfficientNet-Lite0 (real ImageNet weights) over scikit-image's real photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from actindex.jobs.index import run_index
from actindex.jobs.spec import IndexRequest
from actindex.queries.db import connect, top_images


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


def test_a_topk_only_index_has_the_same_topk_and_no_activations(photo_index, skimage_photos, tmp_path):
    import duckdb
    import pytest as _pytest
    from typer.testing import CliRunner

    from actindex.jobs.cli import app
    from actindex.queries.db import NO_ACTIVATIONS

    _, dense = photo_index
    out = tmp_path / "topk_only"
    request = IndexRequest(
        source=str(skimage_photos), out=str(out), model="efficientnet_lite0", store="topk",
        layers=("blocks.3", "classifier"), k=3, batch_size=8, executor="local", progress=False,
    )  # fmt: skip
    summary = run_index(request)
    assert (
        summary.activation_rows == 0
        and summary.topk_rows == dense.sql("SELECT count(*) FROM topk").fetchall()[0][0]
    )
    assert not (out / "activations").exists()
    con = connect(out)
    query = "SELECT * FROM topk ORDER BY layer, unit, rank"
    assert con.sql(query).fetchall() == dense.sql(query).fetchall()
    with _pytest.raises(duckdb.Error, match="built with --store topk"):
        con.sql("SELECT count(*) FROM activations").fetchall()
    runner = CliRunner()
    top = runner.invoke(app, ["top", str(out), "--layer", "classifier", "--unit", "967", "--k", "1"])
    assert top.exit_code == 0 and "coffee.png" in top.output
    grid = ["grid", str(out), "--layer", "classifier", "--units", "967,282", "--out", str(tmp_path / "g.png")]
    sheet = runner.invoke(app, grid)  # --k 9 by default: more than this index kept, and no activations
    assert sheet.exit_code == 2 and "kept the top 3" in sheet.output and not (tmp_path / "g.png").exists()
    sheet = runner.invoke(app, [*grid, "--k", "3"])
    assert sheet.exit_code == 0 and (tmp_path / "g.png").is_file()
    status = runner.invoke(app, ["status", str(out)])
    assert status.exit_code == 0 and f"{summary.indexed} ok" in status.output
    failed = runner.invoke(app, ["sql", str(out), "SELECT count(*) FROM activations"])
    assert (
        failed.exit_code == 2
        and NO_ACTIVATIONS in failed.output
        and len(failed.output.strip().splitlines()) == 1
    )


def test_classifier_units_are_named_by_their_class_and_no_other_unit_is(photo_index):
    from actindex.jobs.demo import CLASS_UNITS

    _, con = photo_index
    named = dict(con.sql("SELECT unit, name FROM units WHERE layer = 'classifier'").fetchall())
    assert len(named) == 1000 and {unit: named[unit] for unit in CLASS_UNITS} == CLASS_UNITS
    assert con.sql("SELECT count(*), count(name) FROM units WHERE layer = 'blocks.3'").fetchall() == [(80, 0)]
    best = top_images(con, "classifier", [967], 1).to_pylist()[0]
    assert (best["name"], Path(best["uri"]).name) == ("espresso", "coffee.png")
