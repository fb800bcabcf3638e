"""Images inside containers: WebDataset tar shards and Parquet files with an image-bytes column.

    for member, label in tar_samples("shards/00000.tar"): ...          # one image per sample key
    for key, row, label in parquet_rows("part-0.parquet", Columns()): ...  # img2dataset / Hugging Face

Both are generators that read a container's headers (tar) or its small columns (Parquet: key, label; never
the image bytes) one piece at a time, so a listing holds one row group at most. The bytes are read later, by
pipeline.storage.open_image_bytes, from the uri the lister built.

WebDataset: a sample is the run of consecutive members whose names share a key, the name up to the first
'.' of its last path segment (webdataset's convention: "a/000123.jpg" and "a/000123.cls" are sample
"a/000123"). Its image is its first member with an image extension; its label is the text of its ".cls"
member, else the "label" field of its ".json" member (a JSON object), else none. A sample without an image
member is not listed (as a folder's text files are not). A tar that ends inside a header stops the listing
of that tar there, and is reported in `errors` ("truncated: ..."); a member whose data the tar cuts short is
listed and becomes a "truncated" error row.

Parquet: the image column is `Columns.image`, or the first of IMAGE_COLUMNS the file has; it holds encoded
bytes (binary) or Hugging Face {"bytes", "path"} structs. A null is a "not an image" error row.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.options import Option
from actindex.pipeline.storage import open_binary

IMAGE_COLUMNS = ("jpg", "image", "jpeg", "png", "webp", "img")  # img2dataset, Hugging Face, others
_SAMPLE = re.compile(r"^((?:.*/)?[^./]+)\.([^/]*)$")


@dataclass(frozen=True)
class Columns:
    """Which Parquet columns hold what (None: the default)."""

    # options of `actindex index` as --image-column, --key-column, --label-column (IndexRequest.columns)
    image: str | None = Option(  # encoded bytes or {"bytes", "path"} structs (Hugging Face)
        "Parquet sources: the image-bytes column (default: jpg, image, ... if present)."
    ).field(None)
    key: str | None = Option(  # img2dataset's "key"
        "Parquet: a unique id per row, hashed into image ids (default: key, else row)."
    ).field(None)
    label: str | None = Option("Parquet sources: the column stored as label, e.g. caption.").field(None)

    def to_dict(self) -> dict | None:
        """run.json form; None when every column is the default (older indexes record nothing)."""
        values = {"image": self.image, "key": self.key, "label": self.label}
        return values if any(v is not None for v in values.values()) else None


# --------------------------------------------------------------------------------------------- tars


def tar_samples(
    location: str, is_image, errors: list | None, relpath: str
) -> Iterator[tuple[str, str | None]]:
    """(image member name, label) per sample of the tar at `location`."""
    key, image, label = None, None, None
    with open_binary(location) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    match = _SAMPLE.match(member.name)
                    if not member.isfile() or match is None:
                        continue
                    if match.group(1) != key:
                        if image is not None:
                            yield image, label
                        key, image, label = match.group(1), None, None
                    ext = match.group(2).lower()
                    if image is None and is_image(member.name):
                        image = member.name
                    elif ext == "cls" or (ext == "json" and label is None):
                        label = _label(tar, member, ext) or label
                problem = _cut_header(f, tar.offset)
        except tarfile.ReadError as exc:
            # "unexpected end of data": the last member's data is cut short; it is listed, and its
            # decode is a "truncated" error row. Anything else: not a tar at all.
            problem = None if "unexpected end of data" in str(exc) else f"not a tar: {exc}"
        if problem is not None:
            if errors is None:
                raise InvalidInputError(f"{location}: {problem}")
            errors.append((relpath, problem))
        if image is not None:
            yield image, label


def _cut_header(f, offset: int) -> str | None:
    """Whether the tar ends inside a member header (tarfile then just stops, and the member is lost)."""
    f.seek(offset)
    rest = f.read(1024)
    if rest.strip(b"\0") and len(rest) < 512:
        return "truncated: the tar ends inside a member header; the members from there on are not listed"
    return None


def _label(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> str | None:
    handle = tar.extractfile(member)
    text = handle.read(1 << 16).decode("utf-8", "replace").strip() if handle is not None else ""
    if ext == "cls":
        return text or None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    label = value.get("label") if isinstance(value, dict) else None
    return None if label is None else str(label)


# ------------------------------------------------------------------------------------------ parquet


def parquet_rows(location: str, columns: Columns) -> Iterator[tuple[str, int, str | None, str]]:
    """(key, row, label, image column) per row of the Parquet file at `location`; key is the key column's
    text, or the row number zero-padded to 9 digits (so that sorting keeps the file's order)."""
    import pyarrow.parquet as pq

    with open_binary(location) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        image = _image_column(location, names, columns.image)
        key = columns.key or ("key" if "key" in names else None)
        wanted = [c for c in (key, columns.label) if c is not None]
        for name in wanted:
            if name not in names:
                raise InvalidInputError(f"{location} has no column {name!r}; its columns: {', '.join(names)}")
        if not wanted:
            for row in range(parquet.metadata.num_rows):
                yield f"{row:09d}", row, None, image
            return
        row = 0
        for batch in parquet.iter_batches(columns=list(dict.fromkeys(wanted)), batch_size=65536):
            keys = batch.column(key).to_pylist() if key else [None] * batch.num_rows
            labels = batch.column(columns.label).to_pylist() if columns.label else [None] * batch.num_rows
            for value, label in zip(keys, labels, strict=True):
                yield (f"{row:09d}" if value is None else str(value)), row, _text(label), image
                row += 1


def _image_column(location: str, names: list[str], chosen: str | None) -> str:
    if chosen is not None and chosen in names:
        return chosen
    if chosen is None:
        found = next((c for c in IMAGE_COLUMNS if c in names), None)
        if found is not None:
            return found
    raise InvalidInputError(
        f"{location} has no image column {chosen or ' or '.join(IMAGE_COLUMNS)}; its columns: "
        f"{', '.join(names)} (choose one with --image-column)"
    )


def _text(value) -> str | None:
    return None if value is None else str(value)
