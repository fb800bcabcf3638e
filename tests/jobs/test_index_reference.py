"""The index equals a brute-force reference: a plain PyTorch loop, one image at a time, no Ray.

The reference shares no code with the job: torchvision transforms for preprocessing, a forward hook per
layer, numpy for max/argmax and for the top-k sort, and its own box arithmetic.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision import transforms

from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.pipeline.preprocess import Preprocessing
from actindex.queries.db import connect, index_preprocessing, top_images
from actindex.queries.grid import crop_tile
from tests.tables import assert_matches_forward, forward_maps

PREP = Preprocessing(resize=72, crop=64, interpolation="bilinear")
LAYERS = ("relu", "layer1", "layer3", "layer4", "fc")
K = 5


def upright_input(path):
    """The model input of the fast decode, for images it does not draft: upright, then the transforms."""
    preprocess = transforms.Compose(
        [
            transforms.Resize(PREP.resize, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(PREP.crop),
            transforms.ToTensor(),
            transforms.Normalize(PREP.mean, PREP.std),
        ]
    )
    return preprocess(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def torchvision_input(path):
    """torchvision's standard pipeline: its ImageFolder loader, then weights.transforms() at PREP's sizes."""
    preprocess = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms(
        crop_size=PREP.crop, resize_size=PREP.resize
    )
    with open(path, "rb") as f:
        return preprocess(Image.open(f).convert("RGB"))


def reference(dataset, layers=LAYERS, model_input=upright_input):
    """{layer: {relpath: (act (U,), y (U,), x (U,))}} computed image by image."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    modules = dict(model.named_modules())
    result = {layer: {} for layer in layers}
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        outputs = {}
        hooks = [modules[n].register_forward_hook(_keep_first(outputs, n)) for n in layers]
        with torch.no_grad():
            model(model_input(path)[None])
        for hook in hooks:
            hook.remove()
        relpath = path.relative_to(dataset).as_posix()
        for layer in layers:
            out = outputs[layer][0].numpy()
            flat = out.reshape(out.shape[0], -1)
            arg = flat.argmax(axis=1)
            width = out.shape[-1] if out.ndim == 3 else 1
            result[layer][relpath] = (flat.max(axis=1), arg // width, arg % width)
    return result


def _keep_first(outputs, name):
    def hook(_module, _inputs, output):
        outputs.setdefault(name, output.detach().clone())

    return hook


def index_config(source, out, preprocessing=PREP, **kwargs) -> IndexRequest:
    return IndexRequest(
        source=str(source),
        out=str(out),
        model="resnet18",
        weights="random",
        layers=LAYERS,
        preprocessing=preprocessing,
        k=K,
        batch_size=4,
        shard_size=5,
        progress=False,
        **kwargs,
    )


def activations_by_relpath(index_dir):
    rows = (
        connect(index_dir)
        .sql(
            "SELECT layer, relpath, unit, act, y, x "
            "FROM activations JOIN images USING (image_id) ORDER BY ALL"
        )
        .fetchall()
    )
    table: dict = {}
    for layer, relpath, unit, act, y, x in rows:
        table.setdefault(layer, {}).setdefault(relpath, []).append((unit, act, y, x))
    return table


def assert_matches_reference(index_dir, expected):
    actual = activations_by_relpath(index_dir)
    assert sorted(actual) == sorted(expected)
    for layer, images in expected.items():
        assert sorted(actual[layer]) == sorted(images), layer
        for relpath, (act, y, x) in images.items():
            units, got_act, got_y, got_x = map(np.array, zip(*actual[layer][relpath], strict=True))
            assert units.tolist() == list(range(len(act)))
            np.testing.assert_allclose(got_act, act, rtol=1e-5, atol=1e-5, err_msg=f"{layer} {relpath}")
            assert (got_y == y).all() and (got_x == x).all(), f"{layer} {relpath}: peak positions differ"


def test_activations_equal_brute_force(local_index_dir, natural_reference):
    assert_matches_reference(local_index_dir, natural_reference)


@pytest.fixture(scope="module")
def topk_only_index(natural_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("topk_only_index")
    run_index(index_config(natural_dataset, out, executor="local", store="topk"))
    return out


@pytest.mark.parametrize("store", ["dense", "topk"])
def test_topk_equals_brute_force_sort_and_boxes(
    local_index_dir, topk_only_index, natural_reference, natural_dataset, store
):
    con = connect(local_index_dir if store == "dense" else topk_only_index)
    ids = dict(con.sql("SELECT relpath, image_id FROM images").fetchall())
    assert_topk_and_boxes(con, natural_reference, {p: Image.open(natural_dataset / p).size for p in ids})


def assert_topk_and_boxes(con, expected, sizes):
    """Each unit's top-K images are the reference's, and each box is the reference box on an original of
    `sizes[relpath]` (width, height)."""
    ids = dict(con.sql("SELECT relpath, image_id FROM images").fetchall())
    rf = {
        row[0]: row[1:]
        for row in con.sql("SELECT layer, rf_size_x, rf_jump_x, rf_start_x FROM layers").fetchall()
    }
    for layer, images in expected.items():
        got = con.execute(
            "SELECT unit, rank, image_id, act, x0, y0, x1, y1, x, y "
            "FROM topk WHERE layer = ? ORDER BY unit, rank",
            [layer],
        ).fetchall()
        units = len(next(iter(images.values()))[0])
        assert len(got) == units * K
        for unit in range(units):
            ranked = sorted(images, key=lambda p: (-images[p][0][unit], ids[p]))[:K]
            rows = [r for r in got if r[0] == unit]
            assert [r[2] for r in rows] == [ids[p] for p in ranked], (layer, unit)
            for row, relpath in zip(rows, ranked, strict=True):
                assert row[4:8] == reference_box(*rf[layer], row[8], row[9], *sizes[relpath]), (
                    layer,
                    unit,
                    relpath,
                )


def reference_box(size, jump, start, x, y, width, height):
    """Receptive field of (y, x) in model-input pixels, clipped to the crop, mapped to the original."""

    def axis(pos, original, resized):
        lo, hi = start + pos * jump, start + pos * jump + size
        lo, hi = max(lo, 0), min(hi, PREP.crop)
        offset = round((resized - PREP.crop) / 2)
        return math.floor((lo + offset) * original / resized), math.ceil((hi + offset) * original / resized)

    short = min(width, height)
    resized_w = PREP.resize if width == short else int(PREP.resize * width / height)
    resized_h = PREP.resize if height == short else int(PREP.resize * height / width)
    x0, x1 = axis(x, width, resized_w)
    y0, y1 = axis(y, height, resized_h)
    return (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))


# --------------------------------------------------------------------------- --decode torchvision


@pytest.fixture(scope="module")
def torchvision_dataset(tmp_path_factory, skimage_photos):
    """EXIF-rotated JPEGs (6 and 3), large JPEGs (drafted by the fast decode; one also rotated) and
    scikit-image photos (RGB, grayscale, RGBA)."""
    from actindex.pipeline.synthetic import synthetic_photo

    folder = tmp_path_factory.mktemp("torchvision_dataset")
    for name, seed, size, orientation in [
        ("exif6.jpg", 1, (200, 150), 6),
        ("exif3.jpg", 2, (150, 200), 3),
        ("large_exif6.jpg", 3, (2400, 1800), 6),
        ("large.jpg", 4, (1800, 2600), None),
    ]:
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        synthetic_photo(seed, *size).save(folder / name, quality=90, exif=exif.tobytes())
    for name in ("chelsea.png", "coffee.png", "horse.png", "camera.png", "hubble_deep_field.jpg"):
        (folder / name).write_bytes((skimage_photos / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def torchvision_index(torchvision_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("torchvision_index")
    prep = dataclasses.replace(PREP, decode="torchvision")
    run_index(index_config(torchvision_dataset, out, preprocessing=prep, executor="local"))
    return out


def test_torchvision_decode_index_equals_a_loop_over_torchvisions_pipeline(
    torchvision_index, torchvision_dataset
):
    maps = forward_maps(torchvision_dataset, "resnet18", list(LAYERS), PREP, model_input=torchvision_input)
    assert_matches_forward(torchvision_index, maps, k=K)
    # what the fast decode gives differs for the rotated and the drafted images: the check above can fail
    upright = forward_maps(torchvision_dataset, "resnet18", ["layer4"], PREP, model_input=upright_input)
    for relpath in ("exif6.jpg", "exif3.jpg", "large_exif6.jpg"):
        assert not np.allclose(upright[relpath]["layer4"], maps[relpath]["layer4"], atol=1e-3), relpath


def test_torchvision_decode_boxes_and_sizes_refer_to_the_stored_pixels(
    torchvision_index, torchvision_dataset
):
    con = connect(torchvision_index)
    stored = {p.name: Image.open(p).size for p in torchvision_dataset.iterdir()}
    assert stored["exif6.jpg"] == (200, 150)  # upright it would be 150 x 200
    sizes = {
        relpath: (w, h) for relpath, w, h in con.sql("SELECT relpath, width, height FROM images").fetchall()
    }
    assert sizes == stored
    assert con.sql("SELECT DISTINCT decode FROM layers").fetchall() == [("torchvision",)]
    assert index_preprocessing(torchvision_index).decode == "torchvision"  # run.json's params
    rf = {
        row[0]: row[1:]
        for row in con.sql("SELECT layer, rf_size_x, rf_jump_x, rf_start_x FROM layers").fetchall()
    }
    rows = con.sql(
        "SELECT layer, relpath, x, y, x0, y0, x1, y1 FROM topk JOIN images USING (image_id)"
    ).fetchall()
    for layer, relpath, x, y, *box in rows:
        assert tuple(box) == reference_box(*rf[layer], x, y, *stored[relpath]), (layer, relpath)


def test_grid_crops_of_a_torchvision_index_come_from_the_stored_pixels(
    torchvision_index, torchvision_dataset
):
    con = connect(torchvision_index)
    rows = [
        row
        for layer in ("relu", "layer1")
        for row in top_images(con, layer, list(range(64)), K).to_pylist()
        if row["uri"].endswith("/exif6.jpg") and (row["x1"] - row["x0"], row["y1"] - row["y0"]) != (200, 150)
    ]
    assert rows, "exif6.jpg is in no top-k list with a partial box"
    stored = Image.open(torchvision_dataset / "exif6.jpg").convert("RGB")
    tile = 64
    for row in rows[:5]:
        box = (row["x0"], row["y0"], row["x1"], row["y1"])
        want = ImageOps.contain(stored.crop(box), (tile, tile), Image.Resampling.LANCZOS)
        got = crop_tile(row, tile, decode=index_preprocessing(torchvision_index).decode)
        left, top = (tile - want.width) // 2, (tile - want.height) // 2
        region = got.crop((left, top, left + want.width, top + want.height))
        assert np.array_equal(np.asarray(region), np.asarray(want)), box
        upright = crop_tile(row, tile, decode="fast")  # the same box on the upright image: elsewhere
        assert not np.array_equal(np.asarray(upright), np.asarray(got)), box


def test_an_index_from_before_decode_existed_resumes_and_refuses_another_decode(
    local_index_dir, natural_dataset, tmp_path
):
    import json
    import shutil

    from actindex.pipeline.errors import UserError

    index = tmp_path / "old"
    shutil.copytree(local_index_dir, index)
    manifest = json.loads((index / "run.json").read_text())
    del manifest["params"]["preprocessing"]["decode"]  # as written before --decode existed
    (index / "run.json").write_text(json.dumps(manifest))
    summary = run_index(index_config(natural_dataset, index, executor="local"))
    assert summary.new_images == 0 and summary.shards_done_before == 3  # nothing recomputed
    prep = dataclasses.replace(PREP, decode="torchvision")
    with pytest.raises(
        UserError, match=r"different parameters \(preprocessing.decode: fast -> torchvision\)"
    ):
        run_index(index_config(natural_dataset, index, preprocessing=prep, executor="local"))


def test_an_index_from_before_rf_gates_existed_resumes_and_refuses_strict_gates(
    local_index_dir, natural_dataset, tmp_path
):
    import json
    import shutil

    import pyarrow.parquet as pq

    from actindex.pipeline.errors import UserError
    from actindex.queries.db import connect, layer_geometry

    index = tmp_path / "old"
    shutil.copytree(local_index_dir, index)
    manifest = json.loads((index / "run.json").read_text())
    assert manifest["params"].pop("rf_gates") == "constant"  # as written before --rf-gates existed
    (index / "run.json").write_text(json.dumps(manifest))
    layers = pq.read_table(index / "layers.parquet")
    pq.write_table(layers.drop_columns(["rf_global_context"]), index / "layers.parquet")
    _, rf = layer_geometry(connect(index), "layer3")
    assert not rf.global_context and not rf.is_global  # a missing column reads as false
    summary = run_index(index_config(natural_dataset, index, executor="local"))
    assert summary.new_images == 0 and summary.shards_done_before == 3  # nothing recomputed
    with pytest.raises(UserError, match=r"different parameters \(rf_gates: constant -> strict\)"):
        run_index(index_config(natural_dataset, index, rf_gates="strict", executor="local"))
