"""The index directory: where each table lives, atomic writes, and the commit protocol of shards.

    layout = IndexLayout("idx/")
    attempt = new_attempt()
    write_activations(table, layout.activations_file("layer4", 3, attempt), metadata)   # a worker
    commit_marker(layout, {"shard": 3, "attempt": attempt, "files": [...], ...})         # the driver
    layout.completed_shards()    # {3: {...marker...}}

A shard is written by whoever computed it: its files get names unique to that attempt
(`images/shard-00003.<attempt>.parquet`), each written under a temporary name and renamed into place.
The driver then writes the shard's marker `_done/shard-00003.json`, atomically and last, listing the
files. Readers build their views from markers only, so they see a shard's complete output or none of it;
the files of an attempt that lost (its worker died, another attempt committed first) are listed by no
marker and are deleted by the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_GROUP = 65_536  # ~64 units of a 1,024-image shard: a one-unit query reads one group per file
MARKER_VERSION = 2
# run.json "format": 2 = attempt-named shard files, kept top-k partials; 3 = no `layer` column inside
# layer=<name>/ partitions, topk/layer=<name>/topk.parquet, topk ties
INDEX_FORMAT = 3


def layer_dirname(layer: str) -> str:
    """A directory name for a layer that can never escape its parent (no '/', never '.' or '..')."""
    return "layer=" + quote(layer, safe="._-")


def layer_from_dirname(name: str) -> str:
    return unquote(name.removeprefix("layer="))


def new_attempt() -> str:
    """A name for one attempt at a shard: its files never collide with another attempt's."""
    return uuid.uuid4().hex[:12]


class IndexLayout:
    """Paths of one index directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    manifest = property(lambda self: self.root / "run.json")
    layers = property(lambda self: self.root / "layers.parquet")
    done = property(lambda self: self.root / "_done")
    topk_dir = property(lambda self: self.root / "topk")
    topk_base = property(lambda self: self.root / "_topk_base")  # the last topk, aside while a run adds
    # which shards' top-k lists topk/ (or _topk_base/) merged; outside the table's folder, which holds
    # Parquet files only (polars refuses a folder with anything else in it)
    topk_covers = property(lambda self: self.root / "_topk.json")
    topk_base_covers = property(lambda self: self.root / "_topk_base.json")
    partials_dir = property(lambda self: self.root / "_topk")  # each shard's own top-k
    journal_dir = property(lambda self: self.root / "_journal")

    def shard_name(self, shard: int, attempt: str) -> str:
        return f"shard-{shard:05d}.{attempt}"

    def images_file(self, shard: int, attempt: str) -> Path:
        return self.root / "images" / f"{self.shard_name(shard, attempt)}.parquet"

    def activations_file(self, layer: str, shard: int, attempt: str) -> Path:
        return self.root / "activations" / layer_dirname(layer) / f"{self.shard_name(shard, attempt)}.parquet"

    def partial_file(self, shard: int, attempt: str) -> Path:
        return self.partials_dir / f"{self.shard_name(shard, attempt)}.parquet"

    def topk_file(self, layer: str, folder: Path | None = None) -> Path:
        return (folder or self.topk_dir) / layer_dirname(layer) / "topk.parquet"

    def marker(self, shard: int) -> Path:
        return self.done / f"shard-{shard:05d}.json"

    def completed_shards(self) -> dict[int, dict]:
        if not self.done.is_dir():
            return {}
        markers = (json.loads(p.read_text()) for p in sorted(self.done.glob("shard-*.json")))
        return {m["shard"]: m for m in markers}

    def topk_files(self) -> list[Path]:
        """The topk table's files, one per layer partition."""
        return sorted(self.topk_dir.glob("layer=*/*.parquet"))

    def topk_rows(self) -> int:
        """Rows of the topk table, from its files' footers."""
        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.topk_files())

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def read_manifest(self) -> dict | None:
        return json.loads(self.manifest.read_text()) if self.manifest.is_file() else None

    def data_dirs(self) -> tuple[Path, ...]:
        """Folders holding shard files (all listed by markers once committed)."""
        return (self.root / "images", self.root / "activations", self.partials_dir)

    def clear(self) -> None:
        """Remove everything actindex writes (and nothing else) from the directory."""
        for name in ("images", "activations", "topk", "_topk", "_topk_base", "_done", "_journal"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for path in (self.manifest, self.layers, self.topk_covers, self.topk_base_covers):
            path.unlink(missing_ok=True)


def marker_id(marker: dict) -> str:
    """What names one committed attempt at a shard: 'NNNNN.<attempt>'."""
    return f"{marker['shard']:05d}.{marker['attempt']}"


def commit_marker(layout: IndexLayout, marker: dict) -> None:
    """Make a shard visible: its files are all in place, so its marker goes last, atomically."""
    atomic_write_json(layout.marker(marker["shard"]), {"version": MARKER_VERSION, **marker})


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


def write_parquet(
    table: pa.Table, path: Path, metadata: dict | None = None, row_group_size: int | None = None, **options
) -> None:
    """Write `table` to `path` atomically (temporary name, fsync-free rename), zstd-compressed, with
    `metadata` as the file's key-value metadata "actindex" (JSON)."""
    stored_schema = options.get("store_schema", True)
    if metadata and stored_schema:  # readers take it from the stored Arrow schema
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"actindex": json.dumps(metadata)}
        )
    with replacing(path) as tmp, pq.ParquetWriter(tmp, table.schema, compression="zstd", **options) as out:
        out.write_table(table, row_group_size=row_group_size)
        if metadata and not stored_schema:
            out.add_key_value_metadata({"actindex": json.dumps(metadata)})


def write_activations(table: pa.Table, path: Path, metadata: dict) -> None:
    """One layer of one shard, sorted by unit then act (pipeline.finish.activations_table): row groups of
    ROWS_PER_GROUP with unit/act statistics and a page index, so a one-unit query reads one group."""
    write_parquet(
        table,
        path,
        metadata,
        row_group_size=ROWS_PER_GROUP,
        use_byte_stream_split=["act"],
        use_dictionary=["image_id", "unit", "y", "x"],
        write_statistics=["unit", "act", "image_id"],
        sorting_columns=[pq.SortingColumn(1), pq.SortingColumn(2, descending=True)],
        write_page_index=True,
        store_schema=False,  # dictionary-typed in memory; readers get the plain types
    )


def marker_totals(markers: dict[int, dict]) -> tuple[int, int, int]:
    """(images, ok images, activation rows) over completed shards' markers."""
    values = list(markers.values())
    return (
        sum(m["images"] for m in values),
        sum(m["ok"] for m in values),
        sum(m["activation_rows"] for m in values),
    )
