"""Comparing indexes: bit for bit, or against per-image forward passes within float32 rounding.

    assert_same_tables(index_a, index_b)                     # every row of images, activations, topk
    maps = forward_maps(folder, "resnet18", ["layer4"], prep) # the full feature maps, one image at a time
    assert_matches_forward(index, maps, k=4)                 # every value, peak and top-k list

Two runs that batch the same images the same way on the same number of torch threads give identical
tables. A run that batches them differently (new images added to an index, shards rewritten by --prune)
gives, for the same image, values that can differ by float32 rounding: a convolution sums K products in
an order that depends on the batch (oneDNN and BLAS block the batch), and each ordering rounds differently.
For one sum of K terms the difference is about sqrt(K) units in the last place of the largest term
(sqrt(3 x 3 x 256) x 2^-24 is 3e-6 of the layer's scale for a ResNet-18 conv), and it grows with depth.
REL_TOL allows ten times what a dozen such layers give: 1e-4 of each layer's largest activation. Where
rounding can decide (a peak between two nearly equal positions, an image at rank k against one just below
it), the check accepts either answer that is right within that tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from actindex.pipeline.decode import Decoder
from actindex.pipeline.layout import IndexLayout
from actindex.pipeline.models import load_model
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.recorder import ActivationRecorder
from actindex.queries.db import connect

REL_TOL = 1e-4


def table_rows(index_dir, name: str) -> list:
    """All rows of a table's files (from the completion markers; topk from its record), in a canonical
    order; rows of a layer=<name> partition start with the partition's name."""
    layout = IndexLayout(index_dir)
    if name == "topk":
        files = layout.topk_files() if layout.exists(layout.topk_covers) else []
    else:
        files = [
            layout.root / f
            for m in layout.completed_shards().values()
            for f in m["files"]
            if f.startswith(name)
        ]
    rows = []
    for f in files:
        partition = (f.parent.name,) if f.parent.name.startswith("layer=") else ()
        rows += [(*partition, *r.values()) for r in layout.read_table(f).to_pylist()]
    return sorted(rows, key=repr)


def assert_same_tables(left, right):
    dense = IndexLayout(left).read_manifest()["params"].get("store", "dense") == "dense"
    for name in ("images", "activations", "topk"):
        rows = table_rows(left, name)
        assert rows or (name == "activations" and not dense), f"{left} has no {name} rows"
        assert rows == table_rows(right, name), name


def forward_maps(
    folder: Path, model: str, layers: list[str], prep: Preprocessing, model_input: Callable | None = None
) -> dict:
    """{relpath: {layer: (U, H, W) float32 feature maps}}: each image alone (a batch of one), decoded by
    the job's own Decoder so that only the batching differs from the job, or by `model_input` (path ->
    (3, crop, crop) normalized float tensor, e.g. torchvision's transforms) when it is given."""
    module = load_model(model, "random").module.eval()
    recorder = ActivationRecorder(module, layers, prep)  # for its normalization only
    decoder = Decoder(prep)
    named = dict(module.named_modules())
    maps: dict = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if model_input is None:
            decoded = decoder(str(path))
            if decoded.error is not None:
                continue
            x = recorder.normalize(decoded.pixels[None])
        else:
            x = model_input(path)[None]
        outputs: dict = {}
        hooks = [named[name].register_forward_hook(_first(outputs, name)) for name in layers]
        try:
            with torch.inference_mode():
                module(x)
        finally:
            for hook in hooks:
                hook.remove()
        relpath = path.relative_to(folder).as_posix()
        maps[relpath] = {
            name: outputs[name][0].numpy().reshape(outputs[name].shape[1], -1) for name in layers
        }
    return maps


def _first(outputs: dict, name: str):
    def hook(_module, _inputs, output):
        outputs.setdefault(name, output.detach().clone())

    return hook


def assert_matches_forward(index_dir, maps: dict, k: int) -> None:
    """Every activation row and every top-k list of the index agrees with `maps` within REL_TOL of the
    layer's scale; every recorded peak is a maximum of its map within that tolerance."""
    con = connect(index_dir)
    relpaths = dict(con.sql("SELECT image_id, relpath FROM images WHERE status = 'ok'").fetchall())
    assert sorted(relpaths.values()) == sorted(maps), "the index holds other images"
    widths = dict(con.sql("SELECT layer, width FROM layers").fetchall())
    for layer, width in widths.items():
        flat = {relpath: layer_maps[layer] for relpath, layer_maps in maps.items()}
        best = {relpath: m.max(axis=1) for relpath, m in flat.items()}  # (U,) reference maxima
        tol = REL_TOL * max(float(np.abs(m).max()) for m in flat.values())
        rows = con.execute(
            "SELECT image_id, unit, act, y, x FROM activations WHERE layer = ? ORDER BY image_id, unit",
            [layer],
        ).fetchall()
        assert len(rows) == len(flat) * len(next(iter(best.values()))), layer
        for image_id, unit, act, y, x in rows:
            relpath = relpaths[image_id]
            assert abs(act - best[relpath][unit]) <= tol, (layer, relpath, unit, act, best[relpath][unit])
            at_peak = flat[relpath][unit, y * width + x]
            assert at_peak >= best[relpath][unit] - tol, (layer, relpath, unit, "the peak is not a maximum")
        _assert_topk(con, layer, relpaths, best, k, tol)


def _assert_topk(con, layer: str, relpaths: dict, best: dict, k: int, tol: float) -> None:
    rows = con.execute(
        "SELECT unit, rank, image_id, act FROM topk WHERE layer = ? ORDER BY unit, rank", [layer]
    )
    by_unit: dict = {}
    for unit, rank, image_id, act in rows.fetchall():
        by_unit.setdefault(unit, []).append((rank, image_id, act))
    units = len(next(iter(best.values())))
    assert sorted(by_unit) == list(range(units)), layer
    for unit, entries in by_unit.items():
        assert [rank for rank, _, _ in entries] == list(range(1, min(k, len(best)) + 1))
        acts = [act for _, _, act in entries]
        assert acts == sorted(acts, reverse=True), (layer, unit, "not best first")
        listed = {relpaths[image_id] for _, image_id, _ in entries}
        for _, image_id, act in entries:
            assert abs(act - best[relpaths[image_id]][unit]) <= tol, (layer, unit, relpaths[image_id])
        kth = acts[-1]
        missed = [r for r in best if r not in listed and best[r][unit] > kth + tol]
        assert not missed, (layer, unit, f"{missed} rank above the k-th listed image")
