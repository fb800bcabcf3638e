"""The index directory: where each table lives, and atomic per-shard writes with completion markers.

    layout = IndexLayout("idx/")
    writer = ShardWriter(layout, metadata={"model": "resnet18"})
    writer.write_shard(shard=3, digest="...", images=images_table, activations={"layer4": table})
    layout.completed_shards()    # {3: {...marker...}}

Every file is written under a temporary name and renamed into place; the shard's marker in `_done/` is
written last and lists the shard's files. Readers build their views from markers only, so they see a
shard's complete output or none of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema

ROWS_PER_GROUP = 65_536  # ~64 units of a 1,024-image shard: a one-unit query reads one group per file
MARKER_VERSION = 1


def layer_dirname(layer: str) -> str:
    """A directory name for a layer that can never escape its parent (no '/', never '.' or '..')."""
    return "layer=" + quote(layer, safe="._-")


class IndexLayout:
    """Paths of one index directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    manifest = property(lambda self: self.root / "run.json")
    layers = property(lambda self: self.root / "layers.parquet")
    done = property(lambda self: self.root / "_done")
    topk_dir = property(lambda self: self.root / "topk")
    journal_dir = property(lambda self: self.root / "_journal")

    def shard_name(self, shard: int) -> str:
        return f"shard-{shard:05d}"

    def images_file(self, shard: int) -> Path:
        return self.root / "images" / f"{self.shard_name(shard)}.parquet"

    def activations_file(self, layer: str, shard: int) -> Path:
        return self.root / "activations" / layer_dirname(layer) / f"{self.shard_name(shard)}.parquet"

    def topk_file(self, layer: str) -> Path:
        return self.topk_dir / f"{layer_dirname(layer)}.parquet"

    def marker(self, shard: int) -> Path:
        return self.done / f"{self.shard_name(shard)}.json"

    def completed_shards(self) -> dict[int, dict]:
        if not self.done.is_dir():
            return {}
        markers = (json.loads(p.read_text()) for p in sorted(self.done.glob("shard-*.json")))
        return {m["shard"]: m for m in markers}

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def read_manifest(self) -> dict | None:
        return json.loads(self.manifest.read_text()) if self.manifest.is_file() else None

    def clear(self) -> None:
        """Remove everything actindex writes (and nothing else) from the directory."""
        for name in ("images", "activations", "topk", "_done", "_journal"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for path in (self.manifest, self.layers):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: Path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on failure removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(table: pa.Table, path: Path, metadata: dict | None = None, **options) -> None:
    """Write `table` to `path` atomically (temporary name, fsync-free rename), zstd-compressed."""
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"actindex": json.dumps(metadata)}
        )
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", **options)


def activations_table(
    layer: str, image_ids: np.ndarray, act: np.ndarray, pos: np.ndarray, width: int
) -> pa.Table:
    """Long-format rows for one layer, sorted by unit, then act descending, then image_id."""
    units = act.shape[1]
    unit_major_act = act.T
    ids = np.broadcast_to(image_ids[None, :], unit_major_act.shape)
    order = np.lexsort((ids, -unit_major_act), axis=1)
    flat_pos = np.take_along_axis(pos.T, order, axis=1).ravel()
    columns = {
        "image_id": np.take_along_axis(ids, order, axis=1).ravel(),
        "layer": pa.repeat(pa.scalar(layer), act.size),
        "unit": np.repeat(np.arange(units, dtype=np.int32), len(image_ids)),
        "act": np.take_along_axis(unit_major_act, order, axis=1).ravel(),
        "y": (flat_pos // width).astype(np.int16),
        "x": (flat_pos % width).astype(np.int16),
    }
    return pa.table(columns, schema=schema.ACTIVATIONS)


def write_activations(table: pa.Table, path: Path, metadata: dict) -> None:
    sorting = [pq.SortingColumn(2), pq.SortingColumn(3, descending=True)]
    write_parquet(
        table,
        path,
        metadata,
        row_group_size=ROWS_PER_GROUP,
        use_byte_stream_split=["act"],
        use_dictionary=["image_id", "layer", "y", "x"],
        sorting_columns=sorting,
        write_page_index=True,
    )


class ShardWriter:
    """A stage: one finished shard's tables -> files in the layout, then its completion marker."""

    def __init__(self, layout: IndexLayout, metadata: dict):
        self.layout = layout
        self.metadata = metadata

    def write_shard(
        self, shard: int, digest: str, images: pa.Table, activations: dict[str, pa.Table]
    ) -> dict:
        """Write the shard's files, then its marker: until the marker exists, readers ignore the files."""
        files = self.write_files(shard, images, activations)
        return self.write_marker(shard, digest, images, activations, files)

    def write_files(self, shard: int, images: pa.Table, activations: dict[str, pa.Table]) -> list[Path]:
        files = [self.layout.images_file(shard)]
        write_parquet(images, files[0], self.metadata)
        for layer, table in activations.items():
            files.append(self.layout.activations_file(layer, shard))
            write_activations(table, files[-1], self.metadata)
        return files

    def write_marker(
        self, shard: int, digest: str, images: pa.Table, activations: dict[str, pa.Table], files: list[Path]
    ) -> dict:
        marker = {
            "version": MARKER_VERSION,
            "shard": shard,
            "digest": digest,
            "images": images.num_rows,
            "ok": int(pc_count(images, "ok")),
            "activation_rows": sum(t.num_rows for t in activations.values()),
            "files": [str(f.relative_to(self.layout.root)) for f in files],
        }
        atomic_write_json(self.layout.marker(shard), marker)
        return marker


def marker_totals(markers: dict[int, dict]) -> tuple[int, int, int]:
    """(images, ok images, activation rows) over completed shards' markers."""
    values = list(markers.values())
    return (
        sum(m["images"] for m in values),
        sum(m["ok"] for m in values),
        sum(m["activation_rows"] for m in values),
    )


def pc_count(images: pa.Table, status: str) -> int:
    return int(np.count_nonzero(images.column("status").to_numpy(zero_copy_only=False) == status))
