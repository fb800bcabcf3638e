"""The index directory: where each table lives, atomic writes, and the commit protocol of shards.

    layout = IndexLayout("idx/")                # or IndexLayout("s3://bkt/idx/")
    attempt = new_attempt()
    write_activations(table, layout.activations_file("layer4", 3, attempt), metadata, layout)  # a worker
    commit_marker(layout, {"shard": 3, "attempt": attempt, "files": [...], ...})               # the driver
    layout.completed_shards()    # {3: {...marker...}}

A shard is written by whoever computed it: its files get names unique to that attempt
(`images/shard-00003.<attempt>.parquet`), each stored whole (a local file under a temporary name, then
renamed; an object in one upload, as object stores have no rename). The driver then writes the shard's
marker `_done/shard-00003.json`, whole and last, listing the files. Readers build their views from
markers only, so they see a shard's complete output or none of it; the files of an attempt that lost
(its worker died, another attempt committed first) are listed by no marker and are deleted by the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

from actindex.pipeline.lock import is_locked
from actindex.pipeline.retry import READS, RetryPolicy, is_transient
from actindex.pipeline.storage import filesystem, is_url

ROWS_PER_GROUP = 65_536  # ~64 units of a 1,024-image shard: a one-unit query reads one group per file
MARKER_VERSION = 2
# run.json "format": 2 = attempt-named shard files, kept top-k partials; 3 = no `layer` column inside
# layer=<name>/ partitions, topk/layer=<name>/topk.parquet, topk ties
INDEX_FORMAT = 3


IndexPath = Path | PurePosixPath  # a local path, or the store's own path ("bkt/prefix/...") of an object


def layer_dirname(layer: str) -> str:
    """A directory name for a layer that can never escape its parent (no '/', never '.' or '..')."""
    return "layer=" + quote(layer, safe="._-")


def layer_from_dirname(name: str) -> str:
    return unquote(name.removeprefix("layer="))


def new_attempt() -> str:
    """A name for one attempt at a shard: its files never collide with another attempt's."""
    return uuid.uuid4().hex[:12]


class IndexLayout:
    """Paths of one index, and the few operations the index needs on them, on a local directory or an
    object-store prefix (s3://bkt/prefix/, through fsspec).

    Paths are `Path`s under a local root, and `PurePosixPath`s "bkt/prefix/..." (the store's own paths)
    under a remote one: both join with `/` and are read and written through the methods below. A local
    write goes to a temporary name and is renamed into place; an object store has no rename, but an object
    appears whole when its upload ends, which is all the commit protocol needs. Every method retries
    transient failures with `retry` (pipeline.retry): each is an operation that can be started again
    (writes replace whole files, deletes skip what is gone), so a retry after a lost reply is harmless.
    """

    def __init__(self, root: str | os.PathLike, retry: RetryPolicy | None = None):
        self.retry = retry or READS  # a job passes its own (--retry-budget)
        text = os.fspath(root)
        self.remote = is_url(text)
        if self.remote:
            self.url = text.rstrip("/")
            self.protocol = self.url.split("://", 1)[0]
            self.fs, base = filesystem(self.url)  # listings not cached: the workers add files all the time
            self.root: Path | PurePosixPath = PurePosixPath(base.rstrip("/"))
        else:
            import fsspec.implementations.local

            self.fs = fsspec.implementations.local.LocalFileSystem()
            self.root = Path(text)
            self.url = str(self.root)

    manifest = property(lambda self: self.root / "run.json")
    layers = property(lambda self: self.root / "layers.parquet")
    units = property(lambda self: self.root / "units.parquet")  # the named units (pipeline.names)
    done = property(lambda self: self.root / "_done")
    topk_dir = property(lambda self: self.root / "topk")
    topk_base = property(lambda self: self.root / "_topk_base")  # the last topk, aside while a run adds
    # which shards' top-k lists topk/ (or _topk_base/) merged; outside the table's folder, which holds
    # Parquet files only (polars refuses a folder with anything else in it)
    topk_covers = property(lambda self: self.root / "_topk.json")
    topk_base_covers = property(lambda self: self.root / "_topk_base.json")
    partials_dir = property(lambda self: self.root / "_topk")  # each shard's own top-k
    contributions_dir = property(lambda self: self.root / "contributions")  # actindex contributions
    contributions_done = property(lambda self: self.root / "_contributions")  # its markers and records

    @property
    def journal_dir(self) -> Path:
        """The decode journal (appended line by line): in the index directory, or for an index on an object
        store (which cannot append) in this machine's temporary directory."""
        if not self.remote:
            return self.root / "_journal"
        key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "actindex-journal" / key

    def shard_name(self, shard: int, attempt: str) -> str:
        return f"shard-{shard:05d}.{attempt}"

    def images_file(self, shard: int, attempt: str) -> IndexPath:
        return self.root / "images" / f"{self.shard_name(shard, attempt)}.parquet"

    def activations_file(self, layer: str, shard: int, attempt: str) -> IndexPath:
        return self.root / "activations" / layer_dirname(layer) / f"{self.shard_name(shard, attempt)}.parquet"

    def partial_file(self, shard: int, attempt: str) -> IndexPath:
        return self.partials_dir / f"{self.shard_name(shard, attempt)}.parquet"

    def topk_file(self, layer: str, folder: IndexPath | None = None) -> IndexPath:
        return (folder or self.topk_dir) / layer_dirname(layer) / "topk.parquet"

    def marker(self, shard: int) -> IndexPath:
        return self.done / f"shard-{shard:05d}.json"

    def contributions_folder(self, layer: str, source: str, markers: bool = False) -> IndexPath:
        """Where the contributions of `layer`'s units from `source` live (their files; with `markers`, their
        markers and record)."""
        base = self.contributions_done if markers else self.contributions_dir
        return base / layer_dirname(layer) / ("from=" + layer_dirname(source).removeprefix("layer="))

    def contributions_file(self, layer: str, source: str, group: int, attempt: str) -> IndexPath:
        return self.contributions_folder(layer, source) / f"group-{group:05d}.{attempt}.parquet"

    def contributions_marker(self, layer: str, source: str, group: int) -> IndexPath:
        return self.contributions_folder(layer, source, markers=True) / f"group-{group:05d}.json"

    def contributions_record(self, layer: str, source: str) -> IndexPath:
        """The parameters the committed groups were computed with (k, top, the topk table, the weights)."""
        return self.contributions_folder(layer, source, markers=True) / "record.json"

    def contributions_markers(self) -> list[dict]:
        """Every committed group's marker, of every (layer, source)."""
        paths = [
            str(p) for p in self.files(self.contributions_done) if re.fullmatch(r"group-\d+\.json", p.name)
        ]
        if not paths:
            return []
        found = self._retried(self._cat_markers, paths, path=self.contributions_done)
        return [json.loads(data) for _, data in sorted(found.items())]

    def location(self, path: IndexPath) -> str:
        """What a reader outside this class opens: the local path, or the object's URL."""
        return f"{self.protocol}://{path}" if self.remote else str(path)

    def _retried(self, fn, *args, path: IndexPath | None = None, **kwargs):
        """fn(*args, **kwargs) under this index's retry policy, named by `path` when it fails."""
        return self.retry.call(fn, *args, what=self.location(path or self.root), **kwargs)

    # ------------------------------------------------------------------------------------------ reading

    def exists(self, path: IndexPath) -> bool:
        return self._retried(self._exists, path, path=path)

    def _exists(self, path: IndexPath) -> bool:
        """fsspec's exists() answers False for any error on a local disk: info() tells "gone" from failing."""
        try:
            self.fs.info(str(path))
        except FileNotFoundError:
            return False
        return True

    def read_json(self, path: IndexPath) -> dict | None:
        """The JSON object stored at `path`, or None when there is none."""
        try:
            return json.loads(self._retried(self.fs.cat_file, str(path), path=path))
        except FileNotFoundError:
            return None

    def read_table(self, path: IndexPath, columns: list[str] | None = None) -> pa.Table:
        return self._retried(self._read_table, path, columns, path=path)

    def _read_table(self, path: IndexPath, columns: list[str] | None) -> pa.Table:
        with self._readable(path) as source:
            return pq.read_table(source, columns=columns)

    def num_rows(self, path: IndexPath) -> int:
        """Rows of a Parquet file, from its footer."""
        return self._retried(self._num_rows, path, path=path)

    def _num_rows(self, path: IndexPath) -> int:
        with self._readable(path) as source:
            return pq.ParquetFile(source).metadata.num_rows

    @contextlib.contextmanager
    def _readable(self, path: IndexPath):
        """What pyarrow reads: a local path as is, an object opened through the filesystem."""
        if not self.remote:
            yield path
            return
        with self.fs.open(str(path), "rb") as f:
            yield f

    def files(self, folder: IndexPath | None = None, detail: bool = False):
        """Every file below `folder` (the root by default), sorted; with `detail`, {path: size}."""
        folder = folder or self.root
        if not self.remote and not os.path.isdir(folder):
            return {} if detail else []
        found = self._retried(self.fs.find, str(folder), detail=True, path=folder)
        base = self.fs._strip_protocol(str(self.root))  # what the filesystem calls the root (absolute)
        files = {
            self.root / PurePosixPath(path).relative_to(base): info["size"]
            for path, info in sorted(found.items())
            if info["type"] == "file"
        }
        return files if detail else list(files)

    def entries(self) -> list[str]:
        """Names at the top of the root (files and folders); [] when it does not exist."""
        try:
            return sorted(
                PurePosixPath(p).name for p in self._retried(self.fs.ls, str(self.root), detail=False)
            )
        except FileNotFoundError:
            return []

    def completed_shards(self) -> dict[int, dict]:
        paths = [str(p) for p in self.files(self.done) if re.fullmatch(r"shard-\d+\.json", p.name)]
        if not paths:
            return {}
        found = self._retried(self._cat_markers, paths, path=self.done)
        markers = (json.loads(data) for _, data in sorted(found.items()))
        return {m["shard"]: m for m in markers}

    def _cat_markers(self, paths: list[str]) -> dict[str, bytes]:
        """The markers at `paths` (read in parallel on a store); one deleted since it was listed is left
        out, any other failure raised (a transient one: the caller starts again)."""
        found = {}
        for path, data in self.fs.cat(paths, on_error="return").items():
            if isinstance(data, FileNotFoundError):
                continue
            if isinstance(data, BaseException):
                raise data
            found[path] = data
        return found

    def topk_files(self) -> list[IndexPath]:
        """The topk table's files, one per layer partition."""
        return [p for p in self.files(self.topk_dir) if p.parent.name.startswith("layer=")]

    def topk_rows(self) -> int:
        """Rows of the topk table, from its files' footers."""
        return sum(self.num_rows(path) for path in self.topk_files())

    def bytes_on_disk(self) -> int:
        return sum(self.files(detail=True).values())

    def read_manifest(self) -> dict | None:
        return self.read_json(self.manifest)

    def data_dirs(self) -> tuple:
        """Folders holding shard files (all listed by markers once committed)."""
        return (self.root / "images", self.root / "activations", self.partials_dir)

    # ------------------------------------------------------------------------------------------ writing

    def put(self, path: IndexPath, data: bytes) -> None:
        """Store `data` at `path` whole or not at all: a local file is written under a temporary name and
        renamed; an object is created by one upload."""
        if self.remote:
            self._retried(self.fs.pipe_file, str(path), data, path=path)
        else:
            self._retried(atomic_write_bytes, path, data, path=path)

    def put_json(self, path: IndexPath, data: dict) -> None:
        self.put(path, json_bytes(data))

    def delete(self, paths: list[IndexPath]) -> None:
        """Delete files; those already gone are skipped (on a store, in one request per 1,000)."""
        if not self.remote:
            for path in paths:
                self._retried(Path(path).unlink, missing_ok=True, path=path)
        elif paths:
            self._retried(self._rm, [str(path) for path in paths], path=paths[0])

    def _rm(self, paths: list[str]) -> None:
        with contextlib.suppress(FileNotFoundError):  # a retry after a lost reply: the first one deleted them
            self.fs.rm(paths)

    def delete_tree(self, folder: IndexPath) -> None:
        if self.remote:
            self.delete(self.files(folder))
        else:
            self._retried(_remove_tree, folder, path=folder)

    def copy_tree(self, source: IndexPath, target: IndexPath) -> None:
        """Copy every file below `source` to the same place below `target` (on a store, server-side)."""
        for path in self.files(source):
            destination = target / path.relative_to(source)
            if self.remote:
                self._retried(self.fs.copy, str(path), str(destination), path=destination)
            else:
                self._retried(_copy_file, path, destination, path=destination)

    def clear(self) -> None:
        """Remove everything actindex writes (and nothing else) from the directory."""
        for name in (
            "images",
            "activations",
            "topk",
            "_topk",
            "_topk_base",
            "_done",
            "contributions",
            "_contributions",
        ):
            self.delete_tree(self.root / name)
        shutil.rmtree(self.journal_dir, ignore_errors=True)
        self.delete([self.manifest, self.layers, self.units, self.topk_covers, self.topk_base_covers])


def _remove_tree(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a transient one is retried; anything else was ignored before, and still is
        if is_transient(exc):
            raise


def _copy_file(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)


def marker_id(marker: dict) -> str:
    """What names one committed attempt at a shard: 'NNNNN.<attempt>'."""
    return f"{marker['shard']:05d}.{marker['attempt']}"


def topk_record(layout: IndexLayout, record: IndexPath) -> set[str] | None:
    """The shards (marker ids) the topk table `record` describes (_topk.json, or _topk_base.json for the
    base set aside), or None when there is no such record."""
    data = layout.read_json(record)
    return None if data is None else set(data["shards"])


def topk_is_current(layout: IndexLayout, markers: dict[int, dict]) -> bool:
    """Whether topk/ holds exactly the merge of the completed shards' top-k lists."""
    return topk_record(layout, layout.topk_covers) == {marker_id(m) for m in markers.values()}


def locked_by(layout: IndexLayout) -> str | None:
    """Who holds the index's one-writer lock right now (pipeline.lock), or None."""
    return is_locked(layout)


def commit_marker(layout: IndexLayout, marker: dict) -> None:
    """Make a shard visible: its files are all in place, so its marker goes last, atomically."""
    layout.put_json(layout.marker(marker["shard"]), {"version": MARKER_VERSION, **marker})


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
    atomic_write_bytes(path, json_bytes(data))


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def encode_parquet(
    table: pa.Table, metadata: dict | None = None, row_group_size: int | None = None, **options
) -> bytes:
    """`table` as a zstd-compressed Parquet file, with `metadata` as its key-value metadata "actindex"
    (JSON); `options` go to pyarrow's ParquetWriter."""
    stored_schema = options.get("store_schema", True)
    if metadata and stored_schema:  # readers take it from the stored Arrow schema
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"actindex": json.dumps(metadata)}
        )
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="zstd", **options) as out:
        out.write_table(table, row_group_size=row_group_size)
        if metadata and not stored_schema:
            out.add_key_value_metadata({"actindex": json.dumps(metadata)})
    return sink.getvalue().to_pybytes()


def write_parquet(
    table: pa.Table, path, metadata: dict | None = None, layout: IndexLayout | None = None, **options
) -> None:
    """Write `table` to `path` whole or not at all (encode_parquet): through `layout` (an index's file,
    maybe on an object store), or a local file written under a temporary name and renamed."""
    data = encode_parquet(table, metadata, **options)
    if layout is None:
        atomic_write_bytes(path, data)
    else:
        layout.put(path, data)


# one layer of one shard, sorted by unit then act (pipeline.finish.activations_table): row groups of
# ROWS_PER_GROUP with unit/act statistics and a page index, so a one-unit query reads one group
ACTIVATION_OPTIONS = {
    "row_group_size": ROWS_PER_GROUP,
    "use_byte_stream_split": ["act"],
    "use_dictionary": ["image_id", "unit", "y", "x"],
    "write_statistics": ["unit", "act", "image_id"],
    "sorting_columns": [pq.SortingColumn(1), pq.SortingColumn(2, descending=True)],
    "write_page_index": True,
    "store_schema": False,  # dictionary-typed in memory; readers get the plain types
}


def write_activations(table: pa.Table, path, metadata: dict, layout: IndexLayout | None = None) -> None:
    """One layer of one shard, in the activations file format (ACTIVATION_OPTIONS)."""
    write_parquet(table, path, metadata, layout, **ACTIVATION_OPTIONS)


def marker_totals(markers: dict[int, dict]) -> tuple[int, int, int]:
    """(images, ok images, activation rows) over completed shards' markers."""
    values = list(markers.values())
    return (
        sum(m["images"] for m in values),
        sum(m["ok"] for m in values),
        sum(m["activation_rows"] for m in values),
    )
