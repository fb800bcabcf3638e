"""The built-in EfficientNet-Lite0 (real ImageNet weights) over scikit-image's real photos."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from actindex.jobs.indexing import run_index
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


# --- squeeze-excitation boxes on real photos ----------------------------------------------------------

SE_INPUT = 832  # features.6 of EfficientNet-B0 sees 787 px: at 832 px its central positions are unclipped


@pytest.fixture(scope="module")
def se_photo_index(skimage_photos, tmp_path_factory):
    import shutil

    photos = tmp_path_factory.mktemp("se_photos")
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):  # wide, wide, tall
        shutil.copyfile(skimage_photos / name, photos / name)
    out = tmp_path_factory.mktemp("se_index")
    config = IndexRequest(
        source=str(photos),
        out=str(out),
        model="efficientnet_b0",
        weights="random",
        layers=("features.6",),
        k=2,
        preprocessing={"resize": SE_INPUT, "crop": SE_INPUT},
        executor="local",
        progress=False,
    )
    run_index(config)
    return connect(out)


def probed_field(layer: str, size: int) -> tuple[int, int, int]:
    """(size, jump, start) of `layer` per axis (the same for both here) from the gradient probe, gates
    detached. At `size` no box is whole, but the last position's left edge and the first two positions'
    right edges are inside the image: together they give the start, the jump and the size."""
    import torch

    from tests.pipeline.test_receptive_field import get_model, linearised, probe_outputs, support_box

    image = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    output = probe_outputs(linearised(get_model("efficientnet_b0")), [layer], image)[layer]
    last = output.shape[-1] - 1

    def box(y: int, x: int) -> tuple[int, int, int, int]:
        (grad,) = torch.autograd.grad(output[0, :, y, x].sum(), image, retain_graph=True)
        return support_box(grad)

    (x0_last, _, _, y1_first), (_, y0_last, x1_second, _), (_, _, x1_first, y1_second) = (
        box(0, last), box(last, 1), box(1, 0)
    )  # fmt: skip
    fields = []
    for lo_last, hi_first, hi_second in ((y0_last, y1_first, y1_second), (x0_last, x1_first, x1_second)):
        jump = hi_second - hi_first
        start = lo_last - last * jump
        assert lo_last > 0 and hi_second < size  # those edges are not clipped
        fields.append((hi_first - start, jump, start))
    assert fields[0] == fields[1]
    return fields[0]


@pytest.mark.slow
def test_squeeze_excite_boxes_are_the_probed_field_in_original_pixels(se_photo_index):
    con = se_photo_index
    size, jump, start = probed_field("features.6", 448)
    ((context,),) = con.sql("SELECT rf_global_context FROM layers WHERE layer = 'features.6'").fetchall()
    assert context
    rows = con.sql(
        "SELECT y, x, x0, y0, x1, y1, width, height FROM topk JOIN images USING (image_id)"
    ).fetchall()
    assert len(rows) > 100
    unclipped = 0
    for y, x, x0, y0, x1, y1, width, height in rows:
        # resize the shorter side to SE_INPUT, centre-crop SE_INPUT: per axis a scale and a crop offset
        short = min(width, height)
        resized = (SE_INPUT * width // short, SE_INPUT * height // short)
        scale = (width / resized[0], height / resized[1])
        offset = (round((resized[0] - SE_INPUT) / 2), round((resized[1] - SE_INPUT) / 2))
        want = []
        for axis, pos in ((0, x), (1, y)):
            lo, hi = (min(max(v, 0), SE_INPUT) for v in (start + pos * jump, start + pos * jump + size))
            want.append(
                (math.floor((lo + offset[axis]) * scale[axis]), math.ceil((hi + offset[axis]) * scale[axis]))
            )
        assert (x0, x1, y0, y1) == (*want[0], *want[1])
        assert x1 - x0 < width and y1 - y0 < height  # not the whole image: the SE gates are constants
        unclipped += start + x * jump >= 0 and start + x * jump + size <= SE_INPUT
    assert unclipped > 0  # some box is the whole field: the size itself is checked
