"""Index layout paths, atomic parquet writes, the activations file format and shard markers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actindex.pipeline import layout as writer
from actindex.pipeline import schema
from actindex.pipeline.finish import activations_table, order_units
from actindex.pipeline.layout import (
    IndexLayout,
    atomic_write_json,
    commit_marker,
    layer_dirname,
    layer_from_dirname,
    marker_id,
    new_attempt,
    write_activations,
    write_parquet,
)

NASTY_LAYERS = [
    "a/b",
    "..",
    ".",
    "x'; drop table y; --",
    "a\\b",
    "../../etc",
    "/abs",
    "",
    "a%2Fb",
    "features.3.conv",
    "ünïcode",
    "a b",
]


@pytest.mark.parametrize("layer", NASTY_LAYERS)
def test_layer_dirname_is_a_single_safe_component(layer: str) -> None:
    name = layer_dirname(layer)
    assert "/" not in name and "\\" not in name
    assert name not in (".", "..", "")
    assert "\x00" not in name


def test_layer_dirnames_are_distinct_and_readable() -> None:
    names = [layer_dirname(layer) for layer in NASTY_LAYERS]
    assert len(set(names)) == len(NASTY_LAYERS)
    assert layer_dirname("layer4") == "layer=layer4"
    assert layer_dirname("features.3.conv") == "layer=features.3.conv"


@pytest.mark.parametrize("layer", NASTY_LAYERS)
def test_layer_paths_stay_inside_the_index_root(tmp_path: Path, layer: str) -> None:
    layout = IndexLayout(tmp_path / "idx")
    root = layout.root.resolve()
    for path in (layout.activations_file(layer, 3, "a1"), layout.topk_file(layer)):
        resolved = path.resolve()
        assert resolved.is_relative_to(root)
        assert resolved != root
    assert layout.activations_file(layer, 3, "a1").parent.parent == layout.root / "activations"
    assert layout.topk_file(layer).parent.parent == layout.root / "topk"
    assert layer_from_dirname(layer_dirname(layer)) == layer


def test_layout_paths(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    assert layout.images_file(3, "ab12") == tmp_path / "images" / "shard-00003.ab12.parquet"
    assert (
        layout.activations_file("layer4", 12, "ab12")
        == tmp_path / "activations" / "layer=layer4" / "shard-00012.ab12.parquet"
    )
    assert layout.partial_file(12, "ab12") == tmp_path / "_topk" / "shard-00012.ab12.parquet"
    assert layout.topk_file("fc") == tmp_path / "topk" / "layer=fc" / "topk.parquet"
    assert layout.marker(7) == tmp_path / "_done" / "shard-00007.json"
    assert layout.manifest == tmp_path / "run.json"
    assert layout.read_manifest() is None
    assert layout.completed_shards() == {}
    assert len({new_attempt() for _ in range(100)}) == 100  # attempts never share file names


def test_write_parquet_is_atomic_zstd_and_carries_metadata(tmp_path: Path) -> None:
    table = pa.table({"a": pa.array(np.arange(1000), pa.int64()), "b": pa.array(["x"] * 1000)})
    path = tmp_path / "sub" / "t.parquet"
    meta = {"model": "resnet18", "k": 5}
    write_parquet(table, path, meta)

    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "t.parquet"]  # no temporary files left
    parquet = pq.ParquetFile(path)
    for rg in range(parquet.metadata.num_row_groups):
        for col in range(parquet.metadata.num_columns):
            assert parquet.metadata.row_group(rg).column(col).compression == "ZSTD"
    assert json.loads(parquet.schema_arrow.metadata[b"actindex"]) == meta
    assert pq.read_table(path).select(["a", "b"]).equals(table)

    write_parquet(table.slice(0, 10), path, {"model": "other"})  # replaces the file
    assert pq.read_table(path).num_rows == 10
    assert json.loads(pq.read_schema(path).metadata[b"actindex"]) == {"model": "other"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "t.parquet"]


def test_write_parquet_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    table = pa.table({"a": [1, 2, 3]})
    path = tmp_path / "t.parquet"

    def failing_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(writer.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_parquet(table, path, {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_write_activations_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    act = rng.standard_normal((6, 3)).astype(np.float32)
    ordered = order_units(act, np.zeros((6, 3), np.int32), np.arange(6, dtype=np.int64))
    table = activations_table(ordered, 4)
    path = tmp_path / "a.parquet"
    write_activations(table, path, {"m": 1})
    back = pq.read_table(path)
    assert back.schema.equals(schema.in_files("activations").remove_metadata(), check_metadata=False)
    # plain types for readers
    assert [f.type for f in back.schema] == [f.type for f in schema.in_files("activations")]
    assert back.equals(table.cast(back.schema))
    assert json.loads(back.schema.metadata[b"actindex"]) == {"m": 1}
    assert json.loads(pq.ParquetFile(path).metadata.metadata[b"actindex"]) == {"m": 1}
    sorting = pq.ParquetFile(path).metadata.row_group(0).sorting_columns
    assert [(s.column_index, s.descending) for s in sorting] == [(1, False), (2, True)]


def test_commit_marker_and_completed_shards(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    marker = {"shard": 3, "attempt": "ab12", "digest": "d3", "files": ["images/shard-00003.ab12.parquet"]}
    commit_marker(layout, marker)
    (layout.done / ".shard-00004.json.tmp-deadbeef").write_text("{not json")  # an interrupted write
    assert layout.completed_shards() == {3: {"version": writer.MARKER_VERSION, **marker}}
    assert marker_id(marker) == "00003.ab12"
    assert [p.name for p in layout.done.iterdir() if not p.name.startswith(".")] == ["shard-00003.json"]


def test_atomic_write_json_and_manifest(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    atomic_write_json(layout.manifest, {"b": 1, "a": [1, 2]})
    assert layout.read_manifest() == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_clear_removes_only_what_actindex_writes(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    for path in (
        layout.images_file(0, "a"),
        layout.activations_file("x", 0, "a"),
        layout.partial_file(0, "a"),
        layout.topk_file("x"),
        layout.topk_file("x", layout.topk_base),
        layout.topk_covers,
        layout.topk_base_covers,
        layout.journal_dir / "batch-1.log",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    commit_marker(layout, {"shard": 0, "attempt": "a", "files": []})
    atomic_write_json(layout.manifest, {})
    layout.layers.write_bytes(b"")
    (tmp_path / "notes.txt").write_text("mine")
    layout.clear()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert layout.completed_shards() == {}
