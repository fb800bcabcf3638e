"""The same images packed as WebDataset tar shards and as Parquet files, and index tables keyed by content.

    names = write_tars(folder, out / "shards", per_shard=4)        # 00000.tar, 00001.tar, ...
    write_parquet(folder, out / "pq", per_file=5)                    # img2dataset: key, jpg, caption
    write_parquet(folder, out / "hf", per_file=5, layout="hf")       # Hugging Face: image {bytes, path}
    rows = content_tables(index_dir)    # images, activations, topk with image ids replaced by content keys

Every image is stored under the key of its file name's stem ("red/red0.png" -> sample "red0"), with its
folder (its ImageFolder label) as the `.cls` text / the label column, so that an index of any of these
packings can be compared with the index of the folder, row for row, by that key.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from actindex.queries.db import connect


def images_of(folder: Path) -> list[tuple[str, str, bytes]]:
    """(key, label, bytes) of every image in `folder`, in relpath order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [(p.stem, p.parent.name, p.read_bytes()) for p in files]


def write_tars(folder: Path, out: Path, per_shard: int) -> int:
    """WebDataset shards of `folder`'s images, each sample "<key>.png" + "<key>.cls"; returns the count."""
    out.mkdir(parents=True, exist_ok=True)
    images = images_of(folder)
    shards = [images[i : i + per_shard] for i in range(0, len(images), per_shard)]
    for n, shard in enumerate(shards):
        with tarfile.open(out / f"{n:05d}.tar", "w") as tar:
            for key, label, data in shard:
                add_member(tar, f"{key}.png", data)
                add_member(tar, f"{key}.cls", label.encode())
    return len(shards)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_parquet(folder: Path, out: Path, per_file: int, layout: str = "img2dataset") -> None:
    """Parquet files of `folder`'s images: img2dataset (key, jpg, caption) or Hugging Face (image struct,
    label)."""
    out.mkdir(parents=True, exist_ok=True)
    images = images_of(folder)
    for n, start in enumerate(range(0, len(images), per_file)):
        chunk = images[start : start + per_file]
        if layout == "hf":
            structs = [{"bytes": data, "path": f"{key}.png"} for key, _, data in chunk]
            table = pa.table({"image": structs, "label": [label for _, label, _ in chunk]})
        else:
            table = pa.table(
                {
                    "key": [key for key, _, _ in chunk],
                    "jpg": pa.array([data for _, _, data in chunk], pa.binary()),
                    "caption": [label for _, label, _ in chunk],
                }
            )
        pq.write_table(table, out / f"{n:05d}.parquet", row_group_size=2)


def content_key(relpath: str) -> str:
    """The image's key whatever packed it: "red/red0.png", "00000.tar#red0.png", "00000.parquet#red0"."""
    return PurePosixPath(relpath.split("#")[-1]).stem


def content_tables(index_dir) -> dict[str, list]:
    """images, activations and topk rows of an index, image ids replaced by content keys, sorted."""
    con = connect(index_dir)
    queries = {
        "images": "SELECT relpath, status, width, height, label, error FROM images",
        "activations": "SELECT i.relpath, a.layer, a.unit, a.act, a.y, a.x FROM activations a "
        "JOIN images i USING (image_id)",
        "topk": "SELECT i.relpath, t.layer, t.unit, t.rank, t.act, t.y, t.x, t.x0, t.y0, t.x1, t.y1 "
        "FROM topk t JOIN images i USING (image_id)",
    }
    return {
        name: sorted((content_key(row[0]), *row[1:]) for row in con.execute(sql).fetchall())
        for name, sql in queries.items()
    }
