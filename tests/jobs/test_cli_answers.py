"""`top`, `grid` and `status` never mislead: k beyond the index's k, interrupted runs, top-k-only indexes,
ties at rank k, units in the order given, files and labels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from actindex.jobs.finalize import set_topk_aside
from actindex.pipeline.layout import IndexLayout
from actindex.queries.db import connect, unit_tops
from tests.jobs.test_cli import invoke


@pytest.fixture(scope="module")
def planted_topk_only(planted_dataset, tmp_path_factory):
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("cli_topk") / "idx"
    result = invoke(
        "index", folder, "--out", out, "--model", "python:tests.conftest:PlantedNet",
        "--layers", "relu*,head", "--k", "5", "--executor", "local", "--trust-code",
        "--resize", "64", "--crop", "64",
        "--interpolation", "nearest", "--mean", "0,0,0", "--std", "1,1,1", "--no-progress",
        "--shard-size", "4", "--store", "topk",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if ".png" in line]


def test_k_beyond_the_index_k_answers_from_activations_exactly(planted_cli_index):
    out, _ = planted_cli_index
    result = invoke("top", out, "--layer", "relu2", "--unit", "1", "--k", "9")
    assert result.exit_code == 0, result.output
    assert "top 9 images" in result.output and "from activations" in result.output
    assert "more than the 3 the topk table keeps" in result.output
    assert len(_rows(result.output)) == 9
    # the same rows as the topk table where both answer, boxes included (computed here, not by a worker)
    tops = unit_tops(out, "relu2", [1], 9)
    kept = connect(out).sql("SELECT * FROM topk WHERE layer = 'relu2' AND unit = 1 ORDER BY rank").fetchall()
    columns = ["rank", "act", "image_id", "y", "x", "x0", "y0", "x1", "y1", "ties"]
    got = tops.rows.select(columns).slice(0, 3).to_pylist()
    names = connect(out).sql("SELECT * FROM topk LIMIT 0").columns
    want = [{c: dict(zip(names, row, strict=True))[c] for c in columns} for row in kept]
    assert got == want
    # and every row is the brute-force order of activations
    acts = (
        connect(out)
        .sql(
            "SELECT image_id, act FROM activations WHERE layer = 'relu2' AND unit = 1 "
            "ORDER BY act DESC, image_id"
        )
        .fetchall()
    )
    assert tops.rows.column("image_id").to_pylist() == [i for i, _ in acts]


def test_a_topk_only_index_says_why_it_cannot_go_beyond_its_k(planted_topk_only):
    result = invoke("top", planted_topk_only, "--layer", "relu1", "--unit", "0", "--k", "6")
    assert result.exit_code == 2
    assert "kept the top 5" in result.output and "--k 5 or less" in result.output
    result = invoke("top", planted_topk_only, "--layer", "relu1", "--unit", "0", "--k", "5")
    assert result.exit_code == 0 and len(_rows(result.output)) == 5


def test_ties_at_rank_k_are_counted_and_said(planted_cli_index):
    out, _ = planted_cli_index
    # the red detector gives exactly 0 on the 6 images without red: ranks 4-9 all tie
    zeros = (
        connect(out)
        .sql("SELECT count(*) FROM activations WHERE layer = 'relu1' AND unit = 0 AND act = 0")
        .fetchall()[0][0]
    )
    assert zeros == 6
    result = invoke("top", out, "--layer", "relu1", "--unit", "0", "--k", "5")
    assert result.exit_code == 0, result.output
    assert "6 images share the k-th act 0; the 2 listed are picked among them by smaller image_id" in (
        " ".join(result.output.split())
    )
    tops = unit_tops(out, "relu1", [0], 5)
    assert tops.rows.column("ties").to_pylist() == [1, 1, 1, 6, 6]


def test_topk_ties_equal_a_count_over_activations(planted_cli_index, local_index_dir, planted_topk_only):
    for index in (planted_cli_index[0], local_index_dir):
        con = connect(index)
        wrong = con.sql(
            "SELECT t.layer, t.unit, t.rank, t.ties, count(a.image_id) AS n FROM topk t "
            "JOIN activations a ON a.layer = t.layer AND a.unit = t.unit AND a.act = t.act "
            "GROUP BY ALL HAVING t.ties <> count(a.image_id)"
        ).fetchall()
        assert wrong == []
    # merged from 3 shards' partials (4, 4 and 1 images): the 6 zeros sit in all three
    ties = (
        connect(planted_topk_only)
        .sql("SELECT ties FROM topk WHERE layer = 'relu1' AND unit = 0 ORDER BY rank")
        .fetchall()
    )
    assert [t for (t,) in ties] == [1, 1, 1, 6, 6]


def test_an_interrupted_index_says_topk_is_rebuilt_by_rerunning(
    planted_cli_index, planted_topk_only, tmp_path
):
    dense, topk_only = tmp_path / "dense", tmp_path / "topk"
    shutil.copytree(planted_cli_index[0], dense)
    shutil.copytree(planted_topk_only, topk_only)
    for index in (dense, topk_only):  # what a run killed before its end leaves
        set_topk_aside(IndexLayout(index))
        manifest = IndexLayout(index).manifest
        manifest.write_text(manifest.read_text().replace('"status": "complete"', '"status": "running"'))
    result = invoke("top", dense, "--layer", "relu1", "--unit", "0", "--k", "3")
    assert result.exit_code == 0, result.output
    assert "last run did not finish" in result.output and "rerun the same" in result.output
    files = [next(w for w in line.split() if w.endswith(".png")) for line in _rows(result.output)]
    assert files == ["red/red0.png", "red/red1.png", "red/red2.png"]
    for command in (("top", "--unit", "0"), ("grid", "--units", "0", "--out", tmp_path / "g.png")):
        result = invoke(command[0], topk_only, "--layer", "relu1", *command[1:])
        assert result.exit_code == 1, result.output
        assert (
            "no topk table yet" in result.output
            and "rerun the same `actindex index` command" in result.output
        )
    assert not (tmp_path / "g.png").exists()
    for index in (dense, topk_only):
        result = invoke("status", index)
        assert result.exit_code == 0
        assert "last run    interrupted" in result.output and "rerun the same index command" in result.output
        assert "topk        not built" in result.output


def test_units_are_drawn_in_the_order_given(planted_cli_index, tmp_path):
    out, _ = planted_cli_index
    tops = unit_tops(out, "relu2", [1, 0], 3)
    assert tops.rows.column("unit").to_pylist() == [1, 1, 1, 0, 0, 0]
    png = tmp_path / "g.png"
    result = invoke(
        "grid", out, "--layer", "relu2", "--units", "1,0", "--k", "3", "--out", png, "--tile", "64"
    )
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(png).convert("RGB")).astype(int)
    # unit 0 is the red detector: its row now comes second, so the red crop sits in the lower half
    red = (sheet[:, :, 0] > 150) & (sheet[:, :, 1] < 60) & (sheet[:, :, 2] < 60)
    rows = np.flatnonzero(red.any(axis=1))
    assert rows.min() > sheet.shape[0] // 2


def test_top_shows_file_names_and_labels(planted_cli_index):
    out, _ = planted_cli_index
    result = invoke("top", out, "--layer", "relu1", "--unit", "0", "--k", "3")
    rows = _rows(result.output)
    assert all(" red " in f" {row} " for row in rows)  # the label (the class folder)
    assert "red/red0.png" in rows[0] and str(out.parent) not in result.output  # relative file names
