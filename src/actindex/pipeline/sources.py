"""Turn a folder, a glob, a list file or containers of images into a sorted list of images with stable ids.

    from actindex.pipeline.listing import list_images
    refs = list_images("photos/")          # recursive; class subfolders become labels
    refs = list_images("photos/**/*.jpg")  # a glob
    refs = list_images("files.csv")        # path[,label] per line (relative paths: to the list file's folder)
    refs = list_images("shards/{00000..00099}.tar")  # WebDataset shards (brace pattern, glob or one .tar)
    refs = list_images("laion/*.parquet", columns=Columns(label="caption"))  # image bytes in a column
    refs = list_images("s3://bkt/photos/")  # any of the above on an object store (fsspec URL)

Sources whose path or pattern ends in .tar or .parquet are containers (pipeline.containers); everything else
lists image files. `iter_images` yields the images one at a time, in listing order; `list_images`
(pipeline.listing) collects, deduplicates, checks and sorts them, and pipeline.listing.Listing does the same
without holding them all.

Ids and uris (pipeline.storage documents the uri forms):

  a file            relpath = path relative to the root (for s3://bkt/photos/: the key below photos/),
                    uri = the absolute path, or the object's URL
  a tar member      relpath = "<tar relpath>#<member name>" (e.g. "00003.tar#000123.jpg"),
                    uri = "tar:<tar path or URL>#<member name>"
  a Parquet row     relpath = "<file relpath>#<key>", key = the key column's text, or the row number in
                    the file as 9 digits ("part-0.parquet#000000017");
                    uri = "parquet:<file path or URL>#row=<row>&column=<image column>"

and image_id is the 63-bit blake2b hash of relpath in every case. The root is the folder the source names,
or the literal folder before the first wildcard or brace, or the folder of the file it names.

A list file (.txt/.csv/.lst: path[,label] per line, a path relative to the list file's folder or absolute,
local files or URLs) is not the root of its images: relpaths are relative to a root that holds them all,
never with "..", so that one dataset has one set of ids however it is named. The root is given (`root`:
--root, or the one an index recorded on its first run) or, by default, the listed files' longest common
folder (`list_root`). A listed file outside the root is refused in one line naming --root. So the same
images listed with absolute paths, with paths relative to another folder, or indexed as their folder
get the same relpaths, ids and uris (labels come from the list's second column, or the subfolders).

image_id is a 63-bit hash of the path relative to the dataset root, so it stays the same across reruns and
when the dataset moves; the list is sorted by that relative path, so shards come out the same every run.

Folders and globs follow folder symlinks (as torchvision's ImageFolder does) but never into a folder they
are already inside of, so a loop such as `sub/loop -> ..` neither recurses forever nor lists a file twice.
Everything that is not a folder and has an image extension is listed, even when it cannot be read (a
dangling symlink, a symlink loop `a.jpg -> b.jpg -> a.jpg`, a FIFO): the decoder turns it into an error row
("unreadable: ...") instead of it silently vanishing. A folder that cannot be listed raises, unless
`errors` is given: then (relpath, reason) is appended for it and the rest is listed; skipped folder
symlink loops are reported there too.

Names are str as the OS gives them: bytes that are not UTF-8 appear as surrogate escapes (os.fsdecode), so
`uri` opens the right file and `image_id` hashes the real bytes. Such strings cannot be stored as Parquet
text; `display_path` turns them into valid, reversible text for storage and `path_from_display` back.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import os
import posixpath
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from actindex.pipeline import storage
from actindex.pipeline.containers import Columns, parquet_rows, tar_samples
from actindex.pipeline.errors import InvalidInputError, MissingInputError
from actindex.pipeline.retry import READS, RetryPolicy

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".lst"})
CONTAINER_EXTENSIONS = {".tar": "tar", ".parquet": "parquet"}
_BRACE = re.compile(r"\{([^{}]*)\}")
S3_PAGE_KEYS = 1_000  # keys per ListObjectsV2 page (S3's largest)


@dataclass(frozen=True)
class ImageRef:
    """One image of the dataset."""

    image_id: int  # stable 63-bit id: hash of relpath
    uri: str  # absolute path read by the decoder
    relpath: str  # path relative to the dataset root, '/'-separated
    label: str | None = None  # class name (ImageFolder subfolder or list-file column)


def image_id_for(relpath: str) -> int:
    digest = hashlib.blake2b(relpath.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def is_list_file(source: str) -> bool:
    """Whether `source` names a list file (local or a URL), from its name alone."""
    return os.path.splitext(source)[1].lower() in LIST_EXTENSIONS and not _is_glob(source)


def check_source(source: str) -> None:
    """A local source that does not exist is refused at once, as its listing would refuse it (a glob or a
    brace pattern is checked by its listing)."""
    pattern = storage.is_url(source) or _is_glob(source) or _BRACE.search(source)
    if not pattern and not Path(source).exists():
        raise MissingInputError(f"{source!r} does not exist")


def dataset_root(source: str) -> str:
    """The directory that relpaths are relative to (recorded in the manifest); a list file's is its files'
    (list_root), this is the list file's own folder."""
    if storage.is_url(source):
        return _url_root(source)
    if _BRACE.search(source) and not Path(source).exists():
        return str(Path(_glob_prefix(source)).resolve())
    path = Path(source)
    if path.is_dir():
        return str(path.resolve())
    if _is_glob(source) and not path.is_file():
        return str(Path(_glob_prefix(source)).resolve())
    return str(path.resolve().parent)


def display_path(path: str) -> str:
    """`path` as valid UTF-8 text for storage (Parquet, JSON): each byte that is not UTF-8 (a surrogate
    escape) becomes %XX and '%' itself becomes %25; nothing else changes, so ordinary paths stay as they
    are. `path_from_display` reverses it exactly for any str os.fsdecode can produce.

        display_path("/d/caf\udce9.png") == "/d/caf%E9.png"
        display_path("/d/100% été.jpg") == "/d/100%25 été.jpg"
    """
    if "%" not in path and not any("\ud800" <= ch <= "\udfff" for ch in path):
        return path
    out = []
    for ch in path:
        if ch == "%":
            out.append("%25")
        elif "\udc80" <= ch <= "\udcff":  # surrogate escape of one undecodable byte
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        elif "\ud800" <= ch <= "\udfff":  # any other lone surrogate: its bytes as Python would write them
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def path_from_display(text: str) -> str:
    """The path (str, surrogate-escaped like os.fsdecode) that `display_path` turned into `text`."""
    if "%" not in text:
        return text
    return urllib.parse.unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def iter_images(
    source: str,
    errors: list[tuple[str, str]] | None = None,
    columns: Columns | None = None,
    retry: RetryPolicy | None = None,
    root: str | None = None,
) -> Iterator[ImageRef]:
    """The images named by `source`, one at a time, in listing order (not sorted, not deduplicated). Each
    request (a folder read, a listing page, a container's index) is retried whole on a transient failure.
    `root`: what a list file's paths are relative to (default: list_root)."""
    retry = retry or READS
    kind = _container_kind(source)
    if kind is not None:
        root = dataset_root(source)
        for location, relpath in _containers(source, root, errors, retry):
            yield from _container_refs(kind, location, relpath, columns or Columns(), errors, retry)
    elif storage.is_url(source) and is_list_file(source):
        yield from _from_list(source, root, retry)
    elif storage.is_url(source):
        yield from _from_url(source, errors, retry)
    else:
        yield from _from_local(source, errors, retry, root)


def _from_local(source: str, errors: list | None, retry: RetryPolicy, root: str | None) -> list[ImageRef]:
    path = Path(source)
    if path.is_dir():
        refs = _from_folder(path, errors, retry)
    elif _is_glob(source) and not path.is_file():  # 'set[1]/a.jpg' that exists is a file, not a glob
        refs = _from_glob(source, errors, retry)
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        refs = list(_from_list(source, root, retry))
    elif path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        refs = [_ref(path.resolve(), path.resolve().parent, None)]
    elif not path.exists():
        raise MissingInputError(f"{source!r} does not exist")
    else:
        raise MissingInputError(
            f"{source!r} is not a folder, a glob, an image, a list file (.txt/.csv of paths), "
            "tar shards (.tar) or Parquet files (.parquet)"
        )
    return refs


def _ref(path: Path, root: Path, label: str | None) -> ImageRef:
    relpath = os.path.relpath(path, root).replace(os.sep, "/")
    return ImageRef(image_id_for(relpath), str(path), relpath, label)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _from_folder(root: Path, errors: list | None, retry: RetryPolicy) -> list[ImageRef]:
    refs = []
    for relpath, file in _walk(str(root.resolve()), errors, retry):
        if _is_image_name(relpath):
            label = relpath.split("/", 1)[0] if "/" in relpath else None
            refs.append(ImageRef(image_id_for(relpath), file, relpath, label))
    return refs


def _walk(
    root: str, errors: list | None, retry: RetryPolicy, max_depth: int | None = None
) -> Iterator[tuple[str, str]]:
    """(relpath, path) of everything below `root` that is not a folder, down to `max_depth` path segments.

    Folder symlinks are followed unless they lead to a folder on the current path (a loop). Entries whose
    type cannot be determined (dangling symlinks, symlink loops) count as files. A folder whose read fails
    transiently (EIO, ESTALE, ... on a network file system) is read again with `retry`.
    """
    stack = [(root, "", frozenset({_identity(os.stat(root))}), 0)]
    while stack:
        folder, rel, ancestors, depth = stack.pop()
        try:
            entries = retry.call(_scan, folder, what=folder)
        except OSError as exc:
            if not rel or errors is None:
                raise
            errors.append((rel, f"unreadable: {(exc.strerror or str(exc)).lower()}"))
            continue
        subfolders = []
        for entry in entries:
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            identity = _folder_identity(entry)
            if identity is None:
                yield relpath, entry.path
            elif identity in ancestors:
                if errors is not None:
                    errors.append((relpath, "symlink loop: leads back to a folder it is inside of; skipped"))
            elif max_depth is None or depth + 1 < max_depth:
                subfolders.append((entry.path, relpath, ancestors | {identity}, depth + 1))
        stack.extend(reversed(subfolders))  # depth first, in name order: errors come out sorted


def _scan(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda entry: entry.name)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _folder_identity(entry: os.DirEntry) -> tuple[int, int] | None:
    """(device, inode) of the folder `entry` is or links to; None if it is not a folder."""
    try:
        return _identity(entry.stat()) if entry.is_dir() else None
    except OSError:  # a symlink loop or a vanished target: not a folder
        return None


def _is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def _glob_prefix(pattern: str) -> str:
    parts = Path(pattern).parts
    prefix = []
    for part in parts:
        if _is_glob(part) or _BRACE.search(part):
            break
        prefix.append(part)
    return str(Path(*prefix)) if prefix else "."


def _from_glob(pattern: str, errors: list | None, retry: RetryPolicy) -> list[ImageRef]:
    return [
        ImageRef(image_id_for(relpath), file, relpath, None)
        for relpath, file in _glob_files(pattern, errors, retry)
        if _is_image_name(relpath)
    ]


def _glob_files(pattern: str, errors: list | None, retry: RetryPolicy) -> Iterator[tuple[str, str]]:
    """(relpath, path) of the files matching `pattern`: glob.glob(pattern, recursive=True) semantics ('**'
    = zero or more folders; wildcards do not match names starting with '.'), over the same loop-safe walk
    as folders, relative to the literal prefix."""
    prefix = _glob_prefix(pattern)
    segments = Path(pattern).parts[len(Path(prefix).parts) :]
    root = Path(prefix).resolve()
    if not root.is_dir():
        return
    depth = None if "**" in segments else len(segments)
    for relpath, file in _walk(str(root), errors, retry, depth):
        if _glob_match(segments, relpath.split("/")):
            yield relpath, file


def _glob_match(segments: tuple[str, ...], parts: list[str]) -> bool:
    if not segments:
        return not parts
    if segments[0] == "**":
        if _glob_match(segments[1:], parts):
            return True
        return bool(parts) and not parts[0].startswith(".") and _glob_match(segments, parts[1:])
    if not parts:
        return False
    name, segment = parts[0], segments[0]
    if name.startswith(".") and _is_glob(segment) and not segment.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, segment) and _glob_match(segments[1:], parts[1:])


# ------------------------------------------------------------------------------------------ list files


def list_root(source: str, root: str | None = None, retry: RetryPolicy | None = None) -> str:
    """The root of list file `source`'s images: `root` (--root) made absolute, else the longest common
    folder of the files it lists (read now)."""
    if root is not None:
        return _given_root(root)
    return _common_folder([location for location, _ in _list_locations(source, retry or READS)])


def _given_root(root: str) -> str:
    """--root as relpaths are computed against it: a URL without its trailing '/', a local folder absolute
    with its symlinks resolved (as a folder source's root is)."""
    return root.rstrip("/") if storage.is_url(root) else os.path.realpath(root)


def _from_list(source: str, root: str | None, retry: RetryPolicy) -> Iterator[ImageRef]:
    """The images of list file `source`, relative to `root` (default: their common folder); one outside it
    is refused."""
    entries = _list_locations(source, retry)
    if not entries:
        return  # no image: refused by the listing, naming the list file
    root = _given_root(root) if root is not None else _common_folder([location for location, _ in entries])
    for location, label in entries:
        relpath = _relpath_below(location, root)
        if relpath is None:
            raise InvalidInputError(
                f"{display_path(location)} (listed in {source}) is outside the dataset root "
                f"{display_path(root)}: image ids are paths relative to it, never with '..' (an index keeps "
                "the root of its first run); index into a new --out, or --overwrite, with --root set to a "
                "folder that holds every listed file"
            )
        uri = storage.join(root, relpath) if storage.is_url(root) else os.path.join(root, relpath)
        yield ImageRef(image_id_for(relpath), uri, relpath, label)


def _list_locations(source: str, retry: RetryPolicy) -> list[tuple[str, str | None]]:
    """(absolute path or URL, label) per entry of list file `source`: relative paths are relative to the
    list file's folder; local paths are normalized ('a/../b' is 'b')."""
    if storage.is_url(source):
        text = storage.read_bytes(source, retry=retry).decode("utf-8-sig")
        folder = storage.parent(source)
        return [
            (_normal_url(entry if storage.is_url(entry) else storage.join(folder, entry)), label)
            for entry, label in _list_entries(csv.reader(io.StringIO(text, newline="")))
        ]
    folder = Path(source).resolve().parent
    with open(source, newline="", encoding="utf-8-sig") as f:
        entries = _list_entries(csv.reader(f))
    return [(os.path.normpath(os.path.join(folder, entry)), label) for entry, label in entries]


def _normal_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    bucket, _, key = rest.partition("/")
    return f"{scheme}://{bucket}/{posixpath.normpath(key).lstrip('/')}" if key else url


def _common_folder(locations: list[str]) -> str:
    """The deepest folder holding every one of `locations` (local paths: with symlinks resolved)."""
    if not locations:  # an empty list: the listing refuses it, naming the list file
        return os.path.realpath(os.curdir)
    if not storage.is_url(locations[0]):
        return os.path.realpath(os.path.commonpath([os.path.dirname(path) for path in locations]))
    common = os.path.commonprefix([url.split("/")[:-1] for url in locations])  # lists: part by part
    if len(common) < 3:  # scheme:, "", bucket: files in several buckets have no common folder
        raise InvalidInputError(
            f"the list names files in several buckets ({locations[0]}, ...): list one bucket's files"
        )
    return "/".join(common)


def _relpath_below(location: str, root: str) -> str | None:
    """`location` relative to `root`, '/'-separated; None when it is not below `root`. A local path is
    tried as written, then with its folder's symlinks resolved (the root's are)."""
    if storage.is_url(location):
        prefix = root.rstrip("/") + "/"
        return location[len(prefix) :] if location.startswith(prefix) else None
    folder, name = os.path.split(location)
    for path in (location, os.path.join(os.path.realpath(folder), name)):
        relpath = os.path.relpath(path, root)
        if relpath != os.curdir and relpath != os.pardir and not relpath.startswith(os.pardir + os.sep):
            return relpath.replace(os.sep, "/")
    return None


def _list_entries(rows: Iterator[list[str]]) -> list[tuple[str, str | None]]:
    """(path, label) per line of a list file's CSV rows: blank lines, '#' comments and an optional
    path[,label] header skipped; a second column, when not blank, is the label."""
    rows = [row for row in rows if row and row[0].strip() and not row[0].startswith("#")]
    if rows and rows[0][0].strip().lower() in ("path", "uri", "file", "filename"):
        rows = rows[1:]
    return [(row[0].strip(), row[1].strip() if len(row) > 1 and row[1].strip() else None) for row in rows]


# ------------------------------------------------------------------------------------------ containers


def _container_kind(source: str) -> str | None:
    return CONTAINER_EXTENSIONS.get(os.path.splitext(source.rstrip("/"))[1].lower())


def expand_braces(pattern: str) -> Iterator[str]:
    """WebDataset's brace patterns: "{00000..00099}" (zero-padded numeric ranges) and "{a,b}", expanded
    left to right, lazily."""
    match = _BRACE.search(pattern)
    if match is None:
        yield pattern
        return
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        choices = (str(n).zfill(width) for n in range(int(first), int(last) + 1))
    else:
        choices = iter(body.split(","))
    for choice in choices:
        yield from expand_braces(head + choice + tail)


def _containers(source: str, root: str, errors: list | None, retry: RetryPolicy) -> Iterator[tuple[str, str]]:
    """(location, relpath) of each container file `source` names: one file, a brace pattern, a glob."""
    url = storage.is_url(source)
    for pattern in expand_braces(source):
        if _is_glob(pattern):
            yield from (_url_glob(pattern, retry) if url else _local_glob(pattern, root, errors, retry))
        elif url:
            yield pattern, _url_relpath(pattern, root)
        else:
            path = Path(pattern).resolve()
            if not path.is_file():
                raise MissingInputError(f"{pattern!r} is not a file")
            yield str(path), os.path.relpath(path, root).replace(os.sep, "/")


def _local_glob(
    pattern: str, root: str, errors: list | None, retry: RetryPolicy
) -> Iterator[tuple[str, str]]:
    for _, file in _glob_files(pattern, errors, retry):
        yield file, os.path.relpath(file, root).replace(os.sep, "/")


def _container_refs(
    kind: str, location: str, relpath: str, columns: Columns, errors: list | None, retry: RetryPolicy
) -> Iterator[ImageRef]:
    """The images of one tar or Parquet file. Its index is read whole before any is yielded, so that a
    read that fails transiently halfway is started again from the beginning, never listed twice."""
    if kind == "tar":

        def attempt() -> tuple[list, list | None]:
            found = None if errors is None else []  # this attempt's: a failed one's are dropped
            return list(tar_samples(location, _is_image_name, found, relpath)), found

        samples, found = retry.call(attempt, what=location)
        if found:
            errors.extend(found)
        for member, label in samples:
            name = f"{relpath}#{member}"
            yield ImageRef(image_id_for(name), storage.tar_uri(location, member), name, label)
    else:
        rows = retry.call(lambda: list(parquet_rows(location, columns)), what=location)
        for key, row, label, column in rows:
            name = f"{relpath}#{key}"
            yield ImageRef(image_id_for(name), storage.parquet_uri(location, row, column), name, label)


# ------------------------------------------------------------------------------------- object stores


def _url_root(source: str) -> str:
    """dataset_root for a URL, from the text alone (nothing is fetched)."""
    scheme, rest = source.split("://", 1)
    parts = rest.split("/")
    for i, part in enumerate(parts):
        if _is_glob(part) or _BRACE.search(part):
            return f"{scheme}://{'/'.join(parts[:i])}"
    if source.endswith("/") or not os.path.splitext(parts[-1])[1]:
        return source.rstrip("/")
    return storage.parent(source)


def _url_relpath(url: str, root: str) -> str:
    return url[len(root) :].lstrip("/")


def _from_url(source: str, errors: list | None, retry: RetryPolicy) -> Iterator[ImageRef]:
    """Objects named by a URL: a prefix ("folder"), a glob or one image (a list file: _from_list). A prefix
    and a glob are listed by one recursive listing (_url_find)."""
    root = _url_root(source)
    fs, _ = storage.filesystem(source)
    ext = os.path.splitext(source)[1].lower()
    if ext in IMAGE_EXTENSIONS and not _is_glob(source):
        retry.call(
            fs.info, source, what=source
        )  # FileNotFoundError -> MissingInputError, as for a local path
        yield ImageRef(image_id_for(_url_relpath(source, root)), source, _url_relpath(source, root))
        return
    if _is_glob(source):
        files, labelled = _url_glob(source, retry), False
    else:  # a prefix, listed like a folder: the first-level "subfolder" is the label
        files, labelled = _url_find(fs, root, retry), True
    for url, relpath in files:
        if _is_image_name(relpath):
            label = relpath.split("/", 1)[0] if labelled and "/" in relpath else None
            yield ImageRef(image_id_for(relpath), url, relpath, label)


def _url_find(fs, root: str, retry: RetryPolicy) -> Iterator[tuple[str, str]]:
    """(URL, relpath) of every object below `root`: on S3 a page of 1,000 keys at a time, so a prefix of
    10^8 objects is never listed into memory at once; on other stores one recursive fsspec find."""
    scheme = root.split("://", 1)[0]
    base = fs._strip_protocol(root).rstrip("/")
    s3 = scheme in ("s3", "s3a")
    paths = _s3_keys(fs, base, retry) if s3 else retry.call(fs.find, base, what=root)
    for path in paths:
        yield f"{scheme}://{path}", path[len(base) :].lstrip("/")


def _s3_keys(fs, base: str, retry: RetryPolicy) -> Iterator[str]:
    """The "bucket/key" of every object below `base` ("bucket/prefix"), one ListObjectsV2 page at a time
    (each page retried on its own: the continuation token names it)."""
    bucket, _, prefix = base.partition("/")
    request = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else "", "MaxKeys": S3_PAGE_KEYS}
    while True:
        page = retry.call(fs.call_s3, "list_objects_v2", what=f"s3://{base}/ (listing)", **request)
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):  # a "folder" marker object
                yield f"{bucket}/{item['Key']}"
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


def _url_glob(pattern: str, retry: RetryPolicy) -> Iterator[tuple[str, str]]:
    root = _url_root(pattern)
    fs, _ = storage.filesystem(pattern)
    segments = tuple(pattern[len(root) :].strip("/").split("/"))
    for url, relpath in _url_find(fs, root, retry):
        if _glob_match(segments, relpath.split("/")):
            yield url, relpath
