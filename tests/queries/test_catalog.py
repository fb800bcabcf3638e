"""The analysis catalog (queries/catalog/*.sql) on indexes of planted images whose answers are known, each
checked against the same figure computed a second, simpler way (numpy, Python sets) where one exists."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.pipeline.errors import InvalidInputError
from actindex.queries.catalog import (
    help_text,
    image_units,
    label_selectivity,
    macros,
    topk_drift,
    unit_stats,
)
from actindex.queries.db import compare_topk, connect
from tests.conftest import PLANTED, PLANTED_PREP, PlantedNet

PURE = {0: ("red", 1.0), 1: ("edge", 1.0)}  # the planted detectors: red squares, vertical edges


@pytest.fixture(scope="module")
def planted(planted_index):
    """The planted network over the planted images (red/, edge/, plain/: the folders are the labels), k=3."""
    summary, con, _ = planted_index
    return summary.out, con


@pytest.fixture(scope="module")
def reseeded(planted_dataset, tmp_path_factory):
    """The same images through the same architecture with other weights (PyTorch's default init, seed 1),
    k=9 (every image), layers relu1 and head. conv1's biases are set: unit 0's to 1 (relu1 unit 0 fires),
    unit 1's to -100 (relu1 unit 1 never fires: pixels are in [0, 1], the weights under 0.2)."""
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("reseeded")
    torch.manual_seed(1)
    net = PlantedNet()
    for module in (net.conv1, net.conv2, net.head[2]):
        module.reset_parameters()
    with torch.no_grad():
        net.conv1.bias.copy_(torch.tensor([1.0, -100.0]))
    torch.save(net.state_dict(), out / "seed1.pth")
    request = IndexRequest(
        source=str(folder), out=str(out / "idx"), model=PLANTED, weights=str(out / "seed1.pth"),
        layers=("relu1", "head"), preprocessing=PLANTED_PREP, trust_code=True, k=9, batch_size=4,
        shard_size=4, executor="local", progress=False,
    )  # fmt: skip
    run_index(request)
    return str(out / "idx"), connect(out / "idx")


def rows_by_unit(table) -> dict[int, dict]:
    return {row["unit"]: row for row in table.to_pylist()}


# ---------------------------------------------------------------------------------------- label_selectivity


@pytest.mark.parametrize("layer", ["relu1", "relu2", "head"])
def test_label_selectivity_finds_the_planted_detectors_pure(planted, layer):
    _, con = planted
    rows = rows_by_unit(label_selectivity(con, layer))
    assert {unit: (r["dominant_label"], r["purity"]) for unit, r in rows.items()} == PURE
    assert rows[0]["shares"] == [{"label": "red", "images": 3, "share": 1.0}]
    assert (rows[1]["images"], rows[1]["labels"], rows[0]["layer"]) == (3, 1, layer)


def test_label_selectivity_shares_are_a_count_of_each_units_top_k(reseeded):
    _, con = reseeded
    labels = dict(con.sql("SELECT image_id, label FROM images").fetchall())
    top = con.sql("SELECT unit, image_id FROM topk WHERE layer = 'head' AND rank <= 4").fetchall()
    for unit, row in rows_by_unit(label_selectivity(con, "head", k=4)).items():
        counts = Counter(labels[image] for u, image in top if u == unit)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        assert [(s["label"], s["images"]) for s in row["shares"]] == ordered
        assert row["dominant_label"] == ordered[0][0] and row["purity"] == pytest.approx(ordered[0][1] / 4)
    # k = all 9 images: three of each label; equal counts go to the label that sorts first
    for row in label_selectivity(con, "head").to_pylist():
        assert (row["images"], row["dominant_label"], row["labels"]) == (9, "edge", 3)
        assert row["purity"] == pytest.approx(1 / 3)


def test_label_selectivity_refuses_what_the_index_cannot_answer(planted):
    _, con = planted
    with pytest.raises(InvalidInputError, match="layer fc is not in this index; indexed layers: head, relu1"):
        label_selectivity(con, "fc")
    with pytest.raises(InvalidInputError, match="k=4 is more than the 3 top images .* ask for k <= 3"):
        label_selectivity(con, "relu1", k=4)


# ---------------------------------------------------------------------------------------------- image_units


def test_image_units_ranks_the_images_own_detector_first(planted):
    _, con = planted
    image_id, uri = con.sql("SELECT image_id, uri FROM images WHERE relpath = 'red/red0.png'").fetchall()[0]
    for image in ("red/red0.png", uri, image_id):  # relpath, uri or image_id
        rows = image_units(con, "head", image).to_pylist()
        assert [(r["unit"], r["unit_rank"]) for r in rows][0] == (0, 1), image
    best = image_units(con, "relu1", "edge/edge0.png", n=1).to_pylist()
    assert [(r["unit"], r["unit_rank"], r["images"]) for r in best] == [(1, 1, 9)]


def test_image_units_measures_each_unit_against_its_own_p99(planted):
    _, con = planted
    acts = con.sql("SELECT unit, act FROM activations WHERE layer = 'relu2'").fetchall()
    mine = dict(
        con.sql(
            "SELECT unit, act FROM activations JOIN images USING (image_id) "
            "WHERE layer = 'relu2' AND relpath = 'plain/plain1.png'"
        ).fetchall()
    )
    for row in image_units(con, "relu2", "plain/plain1.png").to_pylist():
        unit_acts = np.array([a for u, a in acts if u == row["unit"]], dtype=np.float64)
        p99 = np.quantile(unit_acts, 0.99)  # linear interpolation, as quantile_cont
        assert row["act"] == pytest.approx(mine[row["unit"]]) and row["p99"] == pytest.approx(p99, rel=1e-6)
        assert row["ratio"] == (pytest.approx(mine[row["unit"]] / p99, rel=1e-5) if p99 > 0 else None)
        assert row["unit_rank"] == 1 + int((unit_acts > mine[row["unit"]]).sum())


def test_image_units_refuses_an_image_that_is_not_indexed(planted):
    _, con = planted
    with pytest.raises(InvalidInputError, match="image red/red9.png is not in this index; give its relpath"):
        image_units(con, "head", "red/red9.png")


# ----------------------------------------------------------------------------------------------- unit_stats


def test_unit_stats_quantiles_are_those_of_each_units_maxima(planted):
    _, con = planted
    acts = con.sql("SELECT unit, act FROM activations WHERE layer = 'relu2'").fetchall()
    for unit, row in rows_by_unit(unit_stats(con, "relu2")).items():
        values = np.array([a for u, a in acts if u == unit], dtype=np.float64)
        p50, p90, p99 = np.quantile(values, [0.5, 0.9, 0.99])
        assert (row["images"], row["dead"]) == (9, False)
        assert row["p50"] == pytest.approx(p50, abs=1e-6) and row["p90"] == pytest.approx(p90, rel=1e-6)
        assert row["p99"] == pytest.approx(p99, rel=1e-6) and row["max"] == pytest.approx(values.max())
        assert row["mean"] == pytest.approx(values.mean(), rel=1e-6)


@pytest.mark.parametrize(
    ("family", "red", "edge"),
    [("stem", "red/red", "edge/edge"), ("folder", "red", "edge"), ("label", "red", "edge")],
)
def test_unit_stats_sees_a_top_k_of_one_family(planted, family, red, edge):
    _, con = planted
    rows = rows_by_unit(unit_stats(con, "relu1", family=family))
    assert [(r["top_family"], r["family_share"], r["families"]) for r in rows.values()] == [
        (red, 1.0, 1),
        (edge, 1.0, 1),
    ]


def test_unit_stats_finds_the_dead_unit_and_mixed_families(reseeded):
    _, con = reseeded
    rows = rows_by_unit(unit_stats(con, "relu1"))
    assert (rows[1]["dead"], rows[1]["max"], rows[1]["p99"]) == (True, 0.0, 0.0)
    assert rows[0]["dead"] is False and rows[0]["max"] > 0
    # k = 9 = every image: three families of three, the largest is the one that sorts first
    assert [(r["families"], r["top_family"]) for r in rows.values()] == [(3, "edge/edge"), (3, "edge/edge")]
    assert rows[0]["family_share"] == pytest.approx(1 / 3)
    with pytest.raises(InvalidInputError, match="family frames is not one of stem, folder, label"):
        unit_stats(con, "relu1", family="frames")


def test_an_images_family_is_its_relpath_without_a_trailing_number(planted):
    _, con = planted
    cases = {
        "shots/cat_001.jpg": "shots/cat",
        "shots/cat-2.png": "shots/cat",
        "video 7/frame 0031.jpg": "video 7/frame",
        "red/red0.png": "red/red",
        "00003.tar#000123.jpg": "00003.tar#000123",  # only a number: its own family
        "n01440764/n01440764_10026.JPEG": "n01440764/n01440764_10026",
        "cat.jpg": "cat",
    }
    for relpath, family in cases.items():
        got = con.sql("SELECT image_family($p, NULL, 'stem')", params={"p": relpath}).fetchall()[0][0]
        assert got == family, relpath
    assert con.sql("SELECT image_family('a/b/c.jpg', 'x', 'folder')").fetchall()[0][0] == "a/b"


# ---------------------------------------------------------------------------------------------- topk_drift


def test_an_index_has_no_drift_from_itself(planted):
    out, _ = planted
    for layer in ("relu1", "relu2", "head"):
        rows = compare_topk(out, out, layer).to_pylist()
        assert [r["unit"] for r in rows] == [0, 1]
        for row in rows:
            assert (row["compared"], row["shared"], row["overlap"], row["jaccard"], row["drift"]) == (
                3,
                3,
                1,
                1,
                0,
            )
            assert row["top"] == row["other_top"]


def test_drift_between_two_weights_is_the_overlap_of_their_top_k(planted, reseeded):
    out, planted_con = planted
    other, reseeded_con = reseeded
    con = connect(out, compare=other)
    drifted = 0
    for layer in ("relu1", "head"):
        rows = topk_drift(con, layer).to_pylist()  # k: 3, the smaller of the two indexes' k
        assert [r["overlap"] for r in rows] == sorted(r["overlap"] for r in rows)  # most changed first
        for row in rows:
            query = (
                f"SELECT image_id FROM topk WHERE layer = '{layer}' AND unit = {row['unit']} AND rank <= 3"
            )
            a = {i for (i,) in planted_con.sql(query).fetchall()}
            b = {i for (i,) in reseeded_con.sql(query).fetchall()}
            assert (row["compared"], row["shared"]) == (3, len(a & b))
            assert row["overlap"] == pytest.approx(len(a & b) / 3)
            assert row["jaccard"] == pytest.approx(len(a & b) / len(a | b))
            drifted += row["drift"] > 0
    assert drifted > 0
    with pytest.raises(
        InvalidInputError, match="layer relu2 is not in the second index; its layers: head, relu1"
    ):
        topk_drift(con, "relu2")
    with pytest.raises(InvalidInputError, match="k=5 is more than the 3 top images"):
        topk_drift(con, "head", k=5)


def test_drift_needs_a_second_index(planted):
    _, con = planted
    with pytest.raises(InvalidInputError, match="no second index to compare with.*--compare"):
        topk_drift(con, "head")


# ------------------------------------------------------------------------------------------------- the files


def test_every_catalog_file_documents_its_macro():
    assert {m.name: m.signature for m in macros()} == {
        "built_from": "built_from(layer, unit, src_layer := NULL)",
        "feeds": "feeds(src_layer, src_unit, n := 10)",
        "image_units": "image_units(layer, image, n := 10)",
        "label_selectivity": "label_selectivity(layer, k := NULL)",
        "topk_drift": "topk_drift(layer, k := NULL)",
        "unit_stats": "unit_stats(layer, k := NULL, family := 'stem')",
    }
    for macro in macros():
        assert macro.summary and "-- Parameters:" in macro.sql and "$" not in macro.sql, macro.name
    assert help_text().splitlines()[0].startswith("built_from(layer, unit, src_layer := NULL): Which units")
