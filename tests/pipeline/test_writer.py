"""Index layout paths, activation tables, atomic parquet writes and shard markers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema, writer
from pipeline.writer import (
    IndexLayout,
    ShardWriter,
    activations_table,
    atomic_write_json,
    layer_dirname,
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
    for path in (layout.activations_file(layer, 3), layout.topk_file(layer)):
        resolved = path.resolve()
        assert resolved.is_relative_to(root)
        assert resolved != root
    assert layout.activations_file(layer, 3).parent.parent == layout.root / "activations"
    assert layout.topk_file(layer).parent == layout.root / "topk"


def test_layout_paths(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    assert layout.images_file(3) == tmp_path / "images" / "shard-00003.parquet"
    assert (
        layout.activations_file("layer4", 12)
        == tmp_path / "activations" / "layer=layer4" / "shard-00012.parquet"
    )
    assert layout.topk_file("fc") == tmp_path / "topk" / "layer=fc.parquet"
    assert layout.marker(7) == tmp_path / "_done" / "shard-00007.json"
    assert layout.manifest == tmp_path / "run.json"
    assert layout.read_manifest() is None
    assert layout.completed_shards() == {}


def test_activations_table_sorting_positions_and_schema() -> None:
    rng = np.random.default_rng(0)
    n, units, width = 9, 4, 5
    image_ids = rng.choice(10_000, n, replace=False).astype(np.int64)
    act = rng.integers(0, 3, (n, units)).astype(np.float32)  # many ties
    pos = rng.integers(0, width * 3, (n, units)).astype(np.int32)
    table = activations_table("layer2", image_ids, act, pos, width)

    assert table.schema.equals(schema.ACTIVATIONS, check_metadata=True)
    assert table.schema.names == ["image_id", "layer", "unit", "act", "y", "x"]
    assert table.num_rows == n * units

    expected = sorted(
        (
            (u, -float(act[i, u]), int(image_ids[i]), int(pos[i, u]) // width, int(pos[i, u]) % width)
            for i in range(n)
            for u in range(units)
        ),
    )
    got = table.to_pydict()
    assert set(got["layer"]) == {"layer2"}
    rows = list(zip(got["unit"], [-a for a in got["act"]], got["image_id"], got["y"], got["x"], strict=True))
    assert rows == expected


def test_activations_table_position_conversion_by_hand() -> None:
    table = activations_table(
        "l",
        np.array([10, 20], dtype=np.int64),
        np.array([[1.0], [2.0]], dtype=np.float32),
        np.array([[13], [6]], dtype=np.int32),
        width=7,
    )
    assert table.to_pydict() == {
        "image_id": [20, 10],
        "layer": ["l", "l"],
        "unit": [0, 0],
        "act": [2.0, 1.0],
        "y": [0, 1],
        "x": [6, 6],
    }


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
    table = activations_table("layer3", np.arange(6, dtype=np.int64), act, np.zeros((6, 3), np.int32), 4)
    path = tmp_path / "a.parquet"
    write_activations(table, path, {"m": 1})
    back = pq.read_table(path)
    assert back.cast(schema.ACTIVATIONS).equals(table)
    assert json.loads(back.schema.metadata[b"actindex"]) == {"m": 1}
    sorting = pq.ParquetFile(path).metadata.row_group(0).sorting_columns
    assert [(s.column_index, s.descending) for s in sorting] == [(2, False), (3, True)]


def images_table(ids: list[int], statuses: list[str], shard: int) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "image_id": ids,
            "uri": [f"/d/{i}.jpg" for i in ids],
            "relpath": [f"{i}.jpg" for i in ids],
            "width": [10] * n,
            "height": [8] * n,
            "label": [None] * n,
            "status": statuses,
            "error": [None if s == "ok" else "not an image: unrecognised format" for s in statuses],
        },
        schema=schema.IMAGES,
    )


def small_activations(layer: str, ids: list[int], units: int) -> pa.Table:
    n = len(ids)
    act = np.arange(n * units, dtype=np.float32).reshape(n, units)
    return activations_table(layer, np.array(ids, dtype=np.int64), act, np.zeros((n, units), np.int32), 2)


def test_shard_writer_writes_marker_last_listing_its_files(tmp_path: Path, monkeypatch) -> None:
    layout = IndexLayout(tmp_path / "idx")
    replaced: list[Path] = []
    real_replace = os.replace

    def logging_replace(src, dst):
        # the marker must not exist before every data file is in place
        replaced.append(Path(dst))
        real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", logging_replace)
    images = images_table([5, 6, 7], ["ok", "error", "ok"], shard=2)
    acts = {"layer1": small_activations("layer1", [5, 7], 3), "a/b": small_activations("a/b", [5, 7], 2)}
    marker = ShardWriter(layout, {"model": "m"}).write_shard(2, "abc123", images, acts)

    assert replaced[-1] == layout.marker(2)
    assert replaced.count(layout.marker(2)) == 1
    data_files = [
        layout.images_file(2),
        layout.activations_file("layer1", 2),
        layout.activations_file("a/b", 2),
    ]
    assert sorted(replaced[:-1]) == sorted(data_files)
    assert sorted(marker["files"]) == sorted(str(p.relative_to(layout.root)) for p in data_files)
    assert all((layout.root / f).is_file() for f in marker["files"])
    assert marker == {
        "version": writer.MARKER_VERSION,
        "shard": 2,
        "digest": "abc123",
        "images": 3,
        "ok": 2,
        "activation_rows": 2 * 3 + 2 * 2,
        "files": marker["files"],
    }
    assert json.loads(layout.marker(2).read_text()) == marker
    assert pq.read_table(layout.images_file(2)).column("image_id").to_pylist() == [5, 6, 7]
    on_disk = {p for p in layout.root.rglob("*") if p.is_file()}
    assert on_disk == {*data_files, layout.marker(2)}  # nothing else, no temporaries


def test_shard_writer_marker_written_after_data_even_with_patched_json(tmp_path: Path, monkeypatch) -> None:
    layout = IndexLayout(tmp_path)
    seen_at_marker_time: list[set[Path]] = []
    real = writer.atomic_write_json

    def spy(path, data):
        seen_at_marker_time.append({p for p in tmp_path.rglob("*.parquet")})
        real(path, data)

    monkeypatch.setattr(writer, "atomic_write_json", spy)
    ShardWriter(layout, {}).write_shard(
        0, "d", images_table([1], ["ok"], 0), {"fc": small_activations("fc", [1], 4)}
    )
    assert seen_at_marker_time == [{layout.images_file(0), layout.activations_file("fc", 0)}]


def test_completed_shards_reads_markers_back(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    shard_writer = ShardWriter(layout, {"model": "m"})
    m0 = shard_writer.write_shard(0, "d0", images_table([1, 2], ["ok", "ok"], 0), {})
    m3 = shard_writer.write_shard(3, "d3", images_table([9], ["error"], 3), {})
    (layout.done / ".shard-00004.json.tmp-deadbeef").write_text("{not json")  # an interrupted write
    done = layout.completed_shards()
    assert done == {0: m0, 3: m3}
    assert done[3]["ok"] == 0 and done[0]["ok"] == 2
    assert done[0]["activation_rows"] == 0 and done[0]["files"] == ["images/shard-00000.parquet"]


def test_atomic_write_json_and_manifest(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    atomic_write_json(layout.manifest, {"b": 1, "a": [1, 2]})
    assert layout.read_manifest() == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_clear_removes_only_what_actindex_writes(tmp_path: Path) -> None:
    layout = IndexLayout(tmp_path)
    ShardWriter(layout, {}).write_shard(
        0, "d", images_table([1], ["ok"], 0), {"x": small_activations("x", [1], 1)}
    )
    atomic_write_json(layout.manifest, {})
    layout.layers.write_bytes(b"")
    (tmp_path / "notes.txt").write_text("mine")
    layout.clear()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert layout.completed_shards() == {}
