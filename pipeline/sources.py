"""Turn a folder, a glob or a list file into a sorted list of images with stable ids.

    refs = list_images("photos/")          # recursive; class subfolders become labels
    refs = list_images("photos/**/*.jpg")  # a glob
    refs = list_images("files.csv")        # path[,label] per line, relative to the list file

image_id is a 63-bit hash of the path relative to the dataset root, so it stays the same across reruns and
when the dataset moves; the list is sorted by that relative path, so shards come out the same every run.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".lst"})


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


def dataset_root(source: str) -> str:
    """The directory that relpaths are relative to (recorded in the manifest)."""
    path = Path(source)
    if path.is_dir():
        return str(path.resolve())
    if _is_glob(source) and not path.is_file():
        return str(Path(_glob_prefix(source)).resolve())
    return str(path.resolve().parent)


def list_images(source: str) -> list[ImageRef]:
    """All images named by `source`, sorted by relative path; raises if there are none."""
    path = Path(source)
    if path.is_dir():
        refs = _from_folder(path)
    elif _is_glob(source) and not path.is_file():  # 'set[1]/a.jpg' that exists is a file, not a glob
        refs = _from_glob(source)
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        refs = _from_list_file(path)
    elif path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        refs = [_ref(path.resolve(), path.resolve().parent, None)]
    else:
        raise FileNotFoundError(
            f"{source!r} is not a folder, a glob, an image or a list file (.txt/.csv of paths)"
        )
    if not refs:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {source!r}")
    refs = list({ref.relpath: ref for ref in refs}.values())  # a list file may name a path twice
    _check_unique(refs)
    return sorted(refs, key=lambda ref: ref.relpath)


def _ref(path: Path, root: Path, label: str | None) -> ImageRef:
    relpath = os.path.relpath(path, root).replace(os.sep, "/")
    return ImageRef(image_id_for(relpath), str(path), relpath, label)


def _from_folder(root: Path) -> list[ImageRef]:
    root = root.resolve()
    refs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                file = Path(dirpath) / name
                parts = file.relative_to(root).parts
                refs.append(_ref(file, root, parts[0] if len(parts) > 1 else None))
    return refs


def _is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def _glob_prefix(pattern: str) -> str:
    parts = Path(pattern).parts
    prefix = []
    for part in parts:
        if _is_glob(part):
            break
        prefix.append(part)
    return str(Path(*prefix)) if prefix else "."


def _from_glob(pattern: str) -> list[ImageRef]:
    root = Path(_glob_prefix(pattern)).resolve()
    files = (Path(p).resolve() for p in glob.glob(pattern, recursive=True))
    return [_ref(f, root, None) for f in files if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]


def _from_list_file(list_file: Path) -> list[ImageRef]:
    root = list_file.resolve().parent
    with open(list_file, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row and row[0].strip() and not row[0].startswith("#")]
    if rows and rows[0][0].strip().lower() in ("path", "uri", "file", "filename"):
        rows = rows[1:]
    refs = []
    for row in rows:
        file = Path(row[0].strip())
        file = file if file.is_absolute() else root / file
        label = row[1].strip() if len(row) > 1 and row[1].strip() else None
        refs.append(_ref(file.absolute(), root, label))
    return refs


def _check_unique(refs: list[ImageRef]) -> None:
    seen: dict[int, str] = {}
    for ref in refs:
        other = seen.setdefault(ref.image_id, ref.relpath)
        if other != ref.relpath:
            raise ValueError(f"image_id collision between {other!r} and {ref.relpath!r}; rename one of them")
