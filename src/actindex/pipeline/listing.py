"""A source's images as the driver holds them: sorted by relpath, deduplicated, spilled to disk in runs.

    with Listing.build("s3://bkt/laion/*.parquet") as listing:
        len(listing)                    # images, after duplicates are dropped
        for ref in listing: ...         # ImageRefs in relpath order; iterate as often as needed
        listing.ids()                   # every image_id, sorted (8 bytes an image)

The listers (pipeline.sources.iter_images) yield one image at a time. Up to `run_rows` of them are held
at once: each such run is sorted, deduplicated and, when there is more than one, written to a
zstd Arrow IPC file in a temporary folder; iterating merges the runs (heapq.merge, a record batch per run
in memory). So 10^8 images never sit in the driver's memory: it holds one run while listing, and a batch
per run and one shard while planning and handing out shards. A small listing (one run) stays in memory.

As `list_images` always did: a path named twice (a list file) is listed once, with its last label; a
source with no image is refused; two relpaths whose 63-bit ids collide are refused when they are in one
run (always, for up to RUN_ROWS images). Across runs a collision is not looked for: that would hold every
id, and its chance is about N^2 / 2^64 (5e-4 for 10^8 images).
"""

from __future__ import annotations

import heapq
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from actindex.pipeline import storage
from actindex.pipeline.containers import Columns
from actindex.pipeline.errors import InvalidInputError, MissingInputError
from actindex.pipeline.retry import RetryPolicy
from actindex.pipeline.sources import IMAGE_EXTENSIONS, ImageRef, iter_images

RUN_ROWS = 200_000  # images held while listing (~130 MB of Python objects); beyond, runs go to disk
BATCH_ROWS = 1_024  # images of each run in memory while merging (10^8 images: 500 runs, ~150 MB)
_SCHEMA = pa.schema(
    [("relpath", pa.binary()), ("uri", pa.binary()), ("label", pa.binary()), ("image_id", pa.int64())]
)


class Listing:
    def __init__(self, runs: list, count: int, folder: tempfile.TemporaryDirectory | None):
        self.runs = runs  # pa.Table (one run, in memory) or Paths of IPC files, each sorted and unique
        self.count = count
        self._folder = folder

    @classmethod
    def build(
        cls,
        source: str,
        errors: list[tuple[str, str]] | None = None,
        columns: Columns | None = None,
        run_rows: int = RUN_ROWS,
        retry: RetryPolicy | None = None,
        root: str | None = None,
    ) -> Listing:
        """List `source` (see pipeline.sources.list_images for `errors`, `columns`, `retry` and `root`)."""
        runs, folder = [], None
        rows: list[ImageRef] = []
        with storage.user_errors(source):
            for ref in iter_images(source, errors, columns, retry, root):
                rows.append(ref)
                if len(rows) >= run_rows:
                    folder = folder or tempfile.TemporaryDirectory(prefix="actindex-listing-")
                    runs.append(_spill(_sorted_run(rows), Path(folder.name), len(runs)))
                    rows = []
        if rows or not runs:
            table = _sorted_run(rows)
            runs.append(_spill(table, Path(folder.name), len(runs)) if folder else table)
        listing = cls(runs, 0, folder)
        # several runs may hold one relpath (a list file naming it twice): count what the merge yields
        listing.count = runs[0].num_rows if isinstance(runs[0], pa.Table) else _distinct(runs)
        if listing.count == 0:
            listing.close()
            raise MissingInputError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {source!r}")
        return listing

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[ImageRef]:
        if len(self.runs) == 1:
            yield from _refs(self.runs[0])
            return
        last = None  # the same relpath in several runs: the last run's (its label) wins, as in list_images
        for ref in heapq.merge(*(_refs(run) for run in self.runs), key=lambda ref: ref.relpath):
            if last is not None and ref.relpath != last.relpath:
                yield last
            last = ref
        if last is not None:
            yield last

    def ids(self) -> np.ndarray:
        """Every image's id, sorted (8 bytes an image: what an incremental run compares with the index)."""
        return np.unique(np.concatenate([_column(run, "image_id") for run in self.runs]))

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sorted_run(rows: list[ImageRef]) -> pa.Table:
    """The rows as a table sorted by relpath as Python sorts str (the order shards always had), each
    relpath once (its last row: a list file's last label). Text is stored as UTF-8 bytes with surrogate
    escapes (file names that are not UTF-8 stay exact)."""
    rows = sorted({ref.relpath: ref for ref in rows}.values(), key=lambda ref: ref.relpath)
    ids = np.fromiter((r.image_id for r in rows), np.int64, len(rows))
    if len(np.unique(ids)) != len(ids):
        _raise_collision(rows)
    return pa.table(
        {
            "relpath": [_encode(r.relpath) for r in rows],
            "uri": [_encode(r.uri) for r in rows],
            "label": [None if r.label is None else _encode(r.label) for r in rows],
            "image_id": pa.array(ids, pa.int64()),
        },
        schema=_SCHEMA,
    )


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _decode(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogateescape")


def _raise_collision(rows: list[ImageRef]) -> None:
    seen: dict[int, str] = {}
    for ref in rows:
        other = seen.setdefault(ref.image_id, ref.relpath)
        if other != ref.relpath:
            raise _collision(other, ref.relpath)


def _collision(first: str, second: str) -> InvalidInputError:
    return InvalidInputError(f"image_id collision between {first!r} and {second!r}; rename one of them")


def _spill(table: pa.Table, folder: Path, n: int) -> Path:
    """Write a sorted run to an IPC file."""
    path = folder / f"run-{n:05d}.arrow"
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.OSFile(os.fspath(path), "wb") as sink, pa.ipc.new_file(sink, _SCHEMA, options=options) as out:
        out.write_table(table, max_chunksize=BATCH_ROWS)
    return path


def _batches(run) -> Iterator[pa.RecordBatch]:
    if isinstance(run, pa.Table):
        yield from run.to_batches(max_chunksize=BATCH_ROWS)
        return
    with pa.OSFile(os.fspath(run), "rb") as source:  # batches own their memory (no mapping to outlive)
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def _refs(run) -> Iterator[ImageRef]:
    for batch in _batches(run):
        ids = batch.column("image_id").to_pylist()
        uris, relpaths, labels = (batch.column(name).to_pylist() for name in ("uri", "relpath", "label"))
        for image_id, uri, relpath, label in zip(ids, uris, relpaths, labels, strict=True):
            yield ImageRef(image_id, _decode(uri), _decode(relpath), _decode(label))


def _distinct(runs: list) -> int:
    """Distinct relpaths over sorted runs (one merge pass over that column alone)."""
    relpaths = (
        (_decode(value) for batch in _batches(run) for value in batch.column("relpath").to_pylist())
        for run in runs
    )
    count, last = 0, None
    for relpath in heapq.merge(*relpaths):
        count, last = count + (relpath != last), relpath
    return count


def _column(run, name: str) -> np.ndarray:
    return np.concatenate(
        [batch.column(name).to_numpy() for batch in _batches(run)] or [np.array([], np.int64)]
    )


def list_images(
    source: str,
    errors: list[tuple[str, str]] | None = None,
    columns: Columns | None = None,
    retry: RetryPolicy | None = None,
    root: str | None = None,
) -> list[ImageRef]:
    """All images named by `source`, sorted by relative path; raises if there are none.

    errors: when given, folders that cannot be listed are appended as (relpath, reason) instead of raising,
    and so are folder symlinks skipped because they loop back to a folder they are inside of, and tars that
    end inside a header.
    columns: the Parquet columns to read (Parquet sources only).
    retry: how long a transient failure of a listing request is retried (pipeline.retry).
    root: what a list file's relpaths are relative to (default: its files' longest common folder).
    """
    with Listing.build(source, errors, columns, retry=retry, root=root) as listing:
        return list(listing)
