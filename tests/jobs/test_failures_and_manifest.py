"""Unreadable files become error rows; reruns reuse finished shards; changed parameters refuse."""

from __future__ import annotations

import shutil

import pytest

from actindex.jobs.indexing import IndexMismatchError, run_index
from actindex.jobs.spec import RunSpec
from actindex.queries.db import connect
from tests.jobs.test_index_reference import index_config
from tests.tables import assert_same_tables


@pytest.fixture()
def broken_dataset(natural_dataset, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(natural_dataset, folder)
    good = (natural_dataset / "a" / "img01.jpg").read_bytes()
    (folder / "a" / "corrupt.jpg").write_bytes(good[:200] + bytes(range(256)) * 4)
    (folder / "b" / "empty.jpg").write_bytes(b"")
    return folder


def test_corrupt_and_empty_files_are_error_rows_and_the_rest_is_indexed(broken_dataset, tmp_path):
    summary = run_index(index_config(broken_dataset, tmp_path / "idx", executor="local"))
    assert (summary.images, summary.indexed, summary.failed) == (16, 14, 2)
    con = connect(tmp_path / "idx")
    errors = dict(con.sql("SELECT relpath, error FROM images WHERE status = 'error'").fetchall())
    assert sorted(errors) == ["a/corrupt.jpg", "b/empty.jpg"]
    assert errors["b/empty.jpg"].startswith("not an image")
    assert all(errors.values())
    failed_rows = con.sql(
        "SELECT count(*) FROM activations JOIN images USING (image_id) WHERE status = 'error'"
    ).fetchall()[0][0]
    assert failed_rows == 0
    assert con.sql("SELECT count(DISTINCT image_id) FROM activations").fetchall()[0][0] == 14


def test_rerun_reuses_finished_shards_and_gives_the_same_tables(natural_dataset, tmp_path):
    first = run_index(index_config(natural_dataset, tmp_path / "idx", executor="local"))
    shutil.copytree(tmp_path / "idx", tmp_path / "copy")
    second = run_index(index_config(natural_dataset, tmp_path / "idx", executor="local"))
    assert first.shards_done_before == 0 and second.shards_done_before == 3
    assert second.activation_rows == first.activation_rows
    assert_same_tables(tmp_path / "idx", tmp_path / "copy")


def test_rerun_with_other_parameters_refuses_unless_overwrite(local_index_dir, natural_dataset, tmp_path):
    shutil.copytree(local_index_dir, tmp_path / "idx")  # index_config's index of natural_dataset
    other = index_config(natural_dataset, tmp_path / "idx", executor="local")
    other.k = 2
    with pytest.raises(IndexMismatchError, match=r"different parameters \(k: 5 -> 2\).*--overwrite"):
        run_index(other)
    other.overwrite = True
    summary = run_index(other)
    assert summary.shards_done_before == 0 and summary.topk_rows > 0
    k = connect(tmp_path / "idx").sql("SELECT max(rank) FROM topk").fetchall()[0][0]
    assert k == 2


def test_refuses_a_non_empty_directory_that_is_not_an_index(natural_dataset, tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "precious.txt").write_text("keep me")
    with pytest.raises(IndexMismatchError, match="no actindex run.json"):
        run_index(index_config(natural_dataset, tmp_path / "idx", executor="local"))
    assert (tmp_path / "idx" / "precious.txt").read_text() == "keep me"


def test_manifest_records_the_parameters(local_index_dir):
    import json

    manifest = json.loads((local_index_dir / "run.json").read_text())  # index_config's, by the plain loop
    params = manifest["params"]
    assert params["model"] == "resnet18" and params["k"] == 5 and params["weights"] == "random"
    assert params["layers"] == ["relu", "layer1", "layer3", "layer4", "fc"]
    assert params["preprocessing"]["crop"] == 64 and len(params["weights_sha256"]) == 64
    assert manifest["status"] == "complete" and manifest["images"] == 14 and manifest["indexed"] == 14
    assert manifest["started"] <= manifest["finished"]
    # every "auto" was resolved before the run and recorded; the params are exactly the frozen run spec
    resolved = {key: params[key] for key in ("device", "precision", "device_decode", "batch_size", "compile")}
    assert resolved == {
        "device": "cpu",
        "precision": "fp32",
        "device_decode": False,
        "batch_size": 4,
        "compile": False,
    }
    assert params["store"] == "dense" and "auto" not in json.dumps(params)
    assert RunSpec.from_params(params).params() == params
    assert manifest["driver_cpu_seconds"] > 0 and manifest["listing_errors"] == []
