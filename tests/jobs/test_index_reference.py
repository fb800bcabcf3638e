"""The index equals a brute-force reference: a plain PyTorch loop, one image at a time, no Ray.

The reference shares no code with the job: torchvision transforms for preprocessing, a forward hook per
layer, numpy for max/argmax and for the top-k sort, and its own box arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision import transforms

from jobs.index import run_index
from jobs.spec import IndexRequest
from pipeline.preprocess import Preprocessing
from queries.db import connect

PREP = Preprocessing(resize=72, crop=64, interpolation="bilinear")
LAYERS = ("relu", "layer1", "layer3", "layer4", "fc")
K = 5


def reference(dataset, layers=LAYERS):
    """{layer: {relpath: (act (U,), y (U,), x (U,))}} computed image by image."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    preprocess = transforms.Compose(
        [
            transforms.Resize(PREP.resize, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(PREP.crop),
            transforms.ToTensor(),
            transforms.Normalize(PREP.mean, PREP.std),
        ]
    )
    modules = dict(model.named_modules())
    result = {layer: {} for layer in layers}
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        outputs = {}
        hooks = [modules[n].register_forward_hook(_keep_first(outputs, n)) for n in layers]
        with torch.no_grad():
            model(preprocess(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))[None])
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


@pytest.fixture(scope="module")
def expected(natural_dataset):
    return reference(natural_dataset)


def index_config(source, out, **kwargs) -> IndexRequest:
    return IndexRequest(
        source=str(source),
        out=str(out),
        model="resnet18",
        layers=LAYERS,
        preprocessing=PREP,
        k=K,
        batch_size=4,
        shard_size=5,
        progress=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def local_index(natural_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference_index")
    run_index(index_config(natural_dataset, out, executor="local"))
    return out


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


def test_activations_equal_brute_force(local_index, expected):
    assert_matches_reference(local_index, expected)


@pytest.fixture(scope="module")
def topk_only_index(natural_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("topk_only_index")
    run_index(index_config(natural_dataset, out, executor="local", store="topk"))
    return out


@pytest.mark.parametrize("store", ["dense", "topk"])
def test_topk_equals_brute_force_sort_and_boxes(
    local_index, topk_only_index, expected, natural_dataset, store
):
    con = connect(local_index if store == "dense" else topk_only_index)
    ids = dict(con.sql("SELECT relpath, image_id FROM images").fetchall())
    sizes = {p: Image.open(natural_dataset / p).size for p in ids}
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
