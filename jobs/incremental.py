"""What an index directory already holds, and how a run continues from it.

    state = read_state(IndexLayout("idx/"))
    pending, missing = plan_pending(list_images("photos/"), state, shard_size=1024)
    prune(layout, state, missing, writer)      # drop images that left the dataset

Shards are immutable once their marker is written. A rerun indexes only the images no completed shard
holds, in new shards numbered after the existing ones; after a kill those are exactly the shards the
first run had not finished, because the image list is sorted and split the same way every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.shards import Shard, ids_digest, plan_shards
from pipeline.sources import ImageRef
from pipeline.writer import IndexLayout, ShardWriter


@dataclass
class IndexState:
    done: dict[int, dict]  # shard -> marker, for shards whose files are all present
    indexed: dict[int, int]  # image_id -> shard holding it

    @property
    def next_shard(self) -> int:
        return max(self.done) + 1 if self.done else 0


def read_state(layout: IndexLayout, repair: bool = True) -> IndexState:
    """Completed shards and the images they hold. A marker whose files are gone is ignored, and with
    `repair` deleted, so that the next run indexes its images again."""
    done = {}
    for shard, marker in layout.completed_shards().items():
        if all((layout.root / f).is_file() for f in marker["files"]):
            done[shard] = marker
        elif repair:
            layout.marker(shard).unlink(missing_ok=True)
    indexed = {}
    for shard in done:
        ids = pq.read_table(layout.images_file(shard), columns=["image_id"]).column("image_id")
        indexed.update(dict.fromkeys(ids.to_pylist(), shard))
    return IndexState(done, indexed)


def remove_orphans(layout: IndexLayout, state: IndexState) -> int:
    """Delete temporary files and files of shards that never got a marker (a killed run's leftovers)."""
    keep = {layout.root / f for marker in state.done.values() for f in marker["files"]}
    removed = 0
    for folder in (layout.root / "images", layout.root / "activations"):
        for path in folder.rglob("*") if folder.is_dir() else ():
            if path.is_file() and path not in keep:
                path.unlink()
                removed += 1
    for path in layout.root.rglob(".*.tmp-*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def plan_pending(refs: list[ImageRef], state: IndexState, shard_size: int) -> tuple[list[Shard], set[int]]:
    """(new shards for images no completed shard holds, ids in the index that left the dataset)."""
    new = [ref for ref in refs if ref.image_id not in state.indexed]
    current = {ref.image_id for ref in refs}
    missing = {image_id for image_id in state.indexed if image_id not in current}
    return plan_shards(new, shard_size, first_index=state.next_shard), missing


def prune(layout: IndexLayout, state: IndexState, missing: set[int], writer: ShardWriter) -> int:
    """Rewrite every shard holding a missing image without it; returns the number of images dropped.

    Each affected shard is rewritten under a new number: new files, then the old marker goes, then the
    new marker comes, then the old files go. A crash in between loses no image for good (a shard without
    marker is re-indexed by the next run) and never shows an image twice.
    """
    dropped = 0
    for shard in sorted({state.indexed[i] for i in missing}):
        marker = state.done[shard]
        files = [layout.root / f for f in marker["files"]]
        images = pq.read_table(layout.images_file(shard))
        keep = pc.invert(pc.is_in(images.column("image_id"), value_set=_id_array(missing)))
        dropped += images.num_rows - pc.sum(keep.cast("int64")).as_py()
        new_shard = state.next_shard
        kept_images = images.filter(keep)
        tables = {layer: _without(pq.read_table(f), missing) for layer, f in _layer_files(layout, marker)}
        if kept_images.num_rows:
            new_files = writer.write_files(new_shard, kept_images, tables)
        layout.marker(shard).unlink()
        if kept_images.num_rows:
            digest = ids_digest(kept_images.column("image_id").to_pylist())
            state.done[new_shard] = writer.write_marker(new_shard, digest, kept_images, tables, new_files)
        for path in files:
            path.unlink(missing_ok=True)
        del state.done[shard]
    for image_id in missing:
        state.indexed.pop(image_id, None)
    return dropped


def _id_array(ids: set[int]):
    import pyarrow as pa

    return pa.array(np.fromiter(ids, dtype=np.int64, count=len(ids)))


def _without(table, missing: set[int]):
    return table.filter(pc.invert(pc.is_in(table.column("image_id"), value_set=_id_array(missing))))


def _layer_files(layout: IndexLayout, marker: dict) -> list[tuple[str, Path]]:
    """(layer, file) for the shard's activations files; the directory name encodes the layer."""
    from urllib.parse import unquote

    paths = [layout.root / f for f in marker["files"] if f.startswith("activations")]
    return [(unquote(path.parent.name.removeprefix("layer=")), path) for path in paths]
