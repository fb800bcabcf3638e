"""Deterministic shards of the sorted image list: the unit of work, of output files and of resume.

    shards = plan_shards(list_images("photos/"), shard_size=1024)
    shards[0].index, shards[0].digest, len(shards[0].refs)

A shard's digest hashes its image ids, so a marker left by an earlier run is reused only when the shard
holds exactly the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from actindex.pipeline.sources import ImageRef


@dataclass(frozen=True)
class Shard:
    index: int  # position in the plan; names the shard's files (shard-00003)
    refs: tuple[ImageRef, ...]  # the shard's images, in sorted order
    digest: str  # sha256 over the image ids: identifies the shard's content

    def items(self) -> list[dict]:
        """One row per image, as the executors pass them to the decode stage."""
        return [
            {
                "image_id": r.image_id,
                "uri": r.uri,
                "relpath": r.relpath,
                "label": r.label,
                "shard": self.index,
            }
            for r in self.refs
        ]


def shard_batches(shards: list[Shard], batch_size: int) -> list[list[dict]]:
    """Items grouped into batches that never cross a shard: every executor computes the same batches,
    so their floating-point results agree bit for bit (a GEMM's rounding depends on the batch)."""
    batches = []
    for shard in shards:
        items = shard.items()
        batches.extend(items[start : start + batch_size] for start in range(0, len(items), batch_size))
    return batches


def ids_digest(image_ids) -> str:
    """sha256 over image ids in order: what a shard marker records about the shard's content."""
    return hashlib.sha256(b"".join(int(i).to_bytes(8, "big") for i in image_ids)).hexdigest()


def plan_shards(refs: Iterable[ImageRef], shard_size: int, first_index: int = 0) -> list[Shard]:
    """Consecutive chunks of `refs`, numbered from `first_index` (after the shards an index already has)."""
    return list(iter_shards(refs, shard_size, first_index))


def iter_shards(refs: Iterable[ImageRef], shard_size: int, first_index: int = 0) -> Iterator[Shard]:
    """plan_shards one shard at a time: `refs` may be a listing too large to hold (pipeline.listing)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1 (got {shard_size})")
    chunk: list[ImageRef] = []
    index = first_index
    for ref in refs:
        chunk.append(ref)
        if len(chunk) == shard_size:
            yield Shard(index, tuple(chunk), ids_digest(r.image_id for r in chunk))
            chunk, index = [], index + 1
    if chunk:
        yield Shard(index, tuple(chunk), ids_digest(r.image_id for r in chunk))
