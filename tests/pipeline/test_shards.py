"""plan_shards: ordered chunks with content digests."""

from __future__ import annotations

import hashlib

import pytest

from actindex.pipeline.shards import plan_shards
from actindex.pipeline.sources import ImageRef, image_id_for


def refs(names: list[str], root: str = "/data") -> list[ImageRef]:
    return [
        ImageRef(image_id_for(n), f"{root}/{n}", n, "lbl" if i % 2 else None) for i, n in enumerate(names)
    ]


NAMES = [f"img{i:03d}.jpg" for i in range(10)]


def test_chunks_in_order() -> None:
    images = refs(NAMES)
    shards = plan_shards(images, shard_size=4)
    assert [s.index for s in shards] == [0, 1, 2]
    assert [len(s.refs) for s in shards] == [4, 4, 2]
    assert [r for s in shards for r in s.refs] == images
    assert shards[1].refs == tuple(images[4:8])


@pytest.mark.parametrize(("size", "counts"), [(1, [1] * 10), (10, [10]), (11, [10]), (3, [3, 3, 3, 1])])
def test_chunk_sizes(size: int, counts: list[int]) -> None:
    assert [len(s.refs) for s in plan_shards(refs(NAMES), size)] == counts


def test_no_images_no_shards() -> None:
    assert plan_shards([], 5) == []


def test_digest_is_sha256_of_the_ids() -> None:
    (shard,) = plan_shards(refs(NAMES[:3]), 8)
    expected = hashlib.sha256(b"".join(image_id_for(n).to_bytes(8, "big") for n in NAMES[:3])).hexdigest()
    assert shard.digest == expected


def test_digest_depends_on_content_only() -> None:
    a = plan_shards(refs(NAMES), 4)
    moved = plan_shards(refs(NAMES, root="/elsewhere"), 4)  # same relpaths -> same ids -> same digests
    assert [s.digest for s in a] == [s.digest for s in moved]
    changed = NAMES.copy()
    changed[5] = "other.jpg"
    b = plan_shards(refs(changed), 4)
    assert a[0].digest == b[0].digest and a[2].digest == b[2].digest
    assert a[1].digest != b[1].digest
    shorter = plan_shards(refs(NAMES[:9]), 4)
    assert shorter[2].digest != a[2].digest
    assert len({s.digest for s in a}) == 3


def test_items_rows() -> None:
    shard = plan_shards(refs(NAMES[:2]), 1)[1]
    assert shard.items() == [
        {
            "image_id": image_id_for(NAMES[1]),
            "uri": f"/data/{NAMES[1]}",
            "relpath": NAMES[1],
            "label": "lbl",
            "shard": 1,
        }
    ]


@pytest.mark.parametrize("size", [0, -3])
def test_shard_size_below_one_raises(size: int) -> None:
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(refs(NAMES), size)
