"""Unit names in an index: `--names` files, the units view, `top`, reruns that change only the names, an
index written before names existed, refusals with exit code 2, and an index on S3."""

from __future__ import annotations

import shutil

import pytest

from actindex.queries.db import connect
from tests.jobs.test_cli import invoke
from tests.jobs.test_sources_s3 import PLANTED_ARGS


def names_of(out) -> dict[tuple[str, int], str | None]:
    return {(layer, unit): name for layer, unit, name in connect(out).sql("SELECT * FROM units").fetchall()}


@pytest.fixture(scope="module")
def names_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    (folder / "head.txt").write_text("red square\nvertical edge\n")
    (folder / "relu1.txt").write_text("reddish\n\n")  # unit 1 stays unnamed
    (folder / "other.txt").write_text("red thing\nedge thing\n")
    (folder / "three.txt").write_text("a\nb\nc\n")
    return folder


@pytest.fixture(scope="module")
def named_index(planted_dataset, names_dir, tmp_path_factory):
    """The planted images; FILE names the output layer (head), relu1=FILE a layer of its own."""
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("named") / "idx"
    names = ("--names", names_dir / "head.txt", "--names", f"relu1={names_dir / 'relu1.txt'}")
    result = invoke("index", folder, "--out", out, *PLANTED_ARGS, *names)
    assert result.exit_code == 0, result.output
    return out


def test_the_units_view_names_the_named_units_and_only_those(named_index):
    assert names_of(named_index) == {
        ("relu1", 0): "reddish",
        ("relu1", 1): None,
        ("relu2", 0): None,
        ("relu2", 1): None,
        ("head", 0): "red square",
        ("head", 1): "vertical edge",
    }


def test_a_model_without_classes_has_no_names(planted_cli_index):
    out, _ = planted_cli_index
    con = connect(out)
    assert con.sql("SELECT count(*), count(name) FROM units").fetchall() == [(6, 0)]  # no made-up names


def test_top_shows_the_units_name(named_index):
    result = invoke("top", named_index, "--layer", "head", "--unit", "0", "--k", "2")
    assert result.exit_code == 0, result.output
    assert 'head unit 0 "red square"' in result.output and "red0.png" in result.output
    result = invoke("top", named_index, "--layer", "relu1", "--unit", "1", "--k", "2")
    assert result.exit_code == 0 and "relu1 unit 1 (from topk)" in result.output, result.output


def test_a_rerun_with_other_names_changes_the_names_and_nothing_else(named_index, names_dir, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(named_index, out)
    data = {p: p.read_bytes() for p in sorted(out.rglob("*.parquet")) if p.name != "units.parquet"}
    result = invoke("index", *rerun_args(named_index, out), "--names", f"head={names_dir / 'other.txt'}")
    assert result.exit_code == 0, result.output
    assert "0 new this run" in result.output and "3 shards reused" in result.output
    assert {p: p.read_bytes() for p in data} == data  # activations, topk, images: not recomputed
    assert names_of(out)[("head", 0)] == "red thing" and names_of(out)[("relu1", 0)] == "reddish"
    result = invoke("index", *rerun_args(named_index, out))  # no --names: the names are kept
    assert result.exit_code == 0, result.output
    assert names_of(out)[("head", 1)] == "edge thing" and names_of(out)[("relu1", 0)] == "reddish"


def rerun_args(named_index, out) -> list:
    folder = connect(named_index).sql("SELECT uri FROM images LIMIT 1").fetchall()[0][0].rsplit("/", 2)[0]
    return [folder, "--out", out, *PLANTED_ARGS]


def test_an_index_written_before_names_opens_with_no_names(named_index, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(named_index, out)
    (out / "units.parquet").unlink()
    con = connect(out)
    assert con.sql("SELECT count(*), count(name) FROM units").fetchall() == [(6, 0)]
    result = invoke("top", out, "--layer", "head", "--unit", "0", "--k", "1")
    assert result.exit_code == 0 and "head unit 0 (from topk)" in result.output, result.output


def test_names_that_do_not_fit_exit_2_with_one_line(planted_dataset, names_dir, tmp_path):
    folder, _ = planted_dataset
    cases = [
        (("--names", names_dir / "three.txt"), "3 lines for the 2 units of layer 'head'"),
        (("--names", f"fc={names_dir / 'head.txt'}"), "layer 'fc' is not indexed"),
        (("--names", names_dir / "missing.txt"), "no such file"),
    ]
    for i, (names, message) in enumerate(cases):
        result = invoke("index", folder, "--out", tmp_path / str(i), *PLANTED_ARGS, *names)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / str(i) / "run.json").exists()  # refused before anything was written
    args = [a if a != "relu*,head" else "relu1" for a in PLANTED_ARGS]  # the output layer not indexed
    result = invoke("index", folder, "--out", tmp_path / "x", *args, "--names", names_dir / "head.txt")
    assert result.exit_code == 2 and "output layer (head, head.2), which is not indexed" in result.output


def test_names_on_an_s3_index(s3_endpoint, planted_dataset, names_dir):
    from tests.jobs.conftest import BUCKET

    folder, _ = planted_dataset
    out = f"s3://{BUCKET}/names/idx/"
    names = ("--names", names_dir / "head.txt", "--names", f"relu1={names_dir / 'relu1.txt'}")
    result = invoke("index", folder, "--out", out, *PLANTED_ARGS, *names)
    assert result.exit_code == 0, result.output
    result = invoke("index", folder, "--out", out, *PLANTED_ARGS, "--names", names_dir / "other.txt")
    assert result.exit_code == 0 and "0 new this run" in result.output, result.output
    named = names_of(out)  # head renamed; relu1's names read back from the store and kept
    assert (named[("head", 0)], named[("relu1", 0)], named[("relu1", 1)]) == ("red thing", "reddish", None)
    result = invoke("top", out, "--layer", "head", "--unit", "1", "--k", "1")
    assert result.exit_code == 0 and 'head unit 1 "edge thing"' in result.output, result.output


def test_names_survive_a_run_that_adds_images(planted_dataset, names_dir, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(planted_dataset[0], folder)
    (folder / "red" / "red0.png").rename(tmp_path / "red0.png")
    out = tmp_path / "idx"
    result = invoke("index", folder, "--out", out, *PLANTED_ARGS, "--names", names_dir / "head.txt")
    assert result.exit_code == 0 and "8 images: 8 indexed" in result.output, result.output
    (tmp_path / "red0.png").rename(folder / "red" / "red0.png")
    result = invoke("index", folder, "--out", out, *PLANTED_ARGS)  # computes the new image, no --names
    assert result.exit_code == 0 and "1 new this run" in result.output, result.output
    assert names_of(out)[("head", 0)] == "red square"
    result = invoke("top", out, "--layer", "head", "--unit", "0", "--k", "1")
    assert 'head unit 0 "red square"' in result.output and "red0.png" in result.output, result.output
