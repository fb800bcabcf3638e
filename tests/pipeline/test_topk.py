"""RunningTopK against a brute-force sort, across batches, merges, ties and NaNs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actindex.pipeline.finish import order_units
from actindex.pipeline.topk import RunningTopK, read_topk, topk_table


def brute_force(act: np.ndarray, ids: np.ndarray, pos: np.ndarray, k: int):
    """Per unit: python sort by (NaN last, act descending, image_id ascending), first k."""
    units = act.shape[1]
    values, out_ids, positions = [], [], []
    for u in range(units):
        rows = sorted(
            range(len(ids)),
            key=lambda i: (math.isnan(act[i, u]), -act[i, u] if not math.isnan(act[i, u]) else 0.0, ids[i]),
        )[:k]
        values.append([act[i, u] for i in rows])
        out_ids.append([ids[i] for i in rows])
        positions.append([pos[i, u] for i in rows])
    return (
        np.array(values, dtype=np.float32),
        np.array(out_ids, dtype=np.int64),
        np.array(positions, dtype=np.int32),
    )


def random_data(rng: np.random.Generator, n: int, units: int):
    # few distinct values -> many ties; some NaNs; ids unique, in random order, spanning the 63-bit range
    act = rng.integers(-3, 4, (n, units)).astype(np.float32) / 2
    act[rng.random((n, units)) < 0.08] = np.nan
    ids = rng.choice(2**62, n, replace=False).astype(np.int64) * 2 + rng.integers(0, 2, n)
    pos = rng.integers(0, 49, (n, units)).astype(np.int32)
    return act, ids, pos


def feed(top: RunningTopK, act, ids, pos, rng: np.random.Generator) -> None:
    start = 0
    while start < len(ids):
        size = int(rng.integers(0, 9))  # includes empty batches
        top.add(act[start : start + size], ids[start : start + size], pos[start : start + size])
        start += size


def assert_same(top: RunningTopK, expected) -> None:
    values, ids, positions = expected
    assert (
        top.values.dtype == np.float32 and top.image_ids.dtype == np.int64 and top.positions.dtype == np.int32
    )
    np.testing.assert_array_equal(top.values, values)  # NaNs compare equal in assert_array_equal
    np.testing.assert_array_equal(top.image_ids, ids)
    np.testing.assert_array_equal(top.positions, positions)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_matches_brute_force_over_random_batches(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    act, ids, pos = random_data(rng, n=60, units=5)
    top = RunningTopK(units=5, k=k)
    feed(top, act, ids, pos, rng)
    assert top.values.shape == (5, k)
    assert_same(top, brute_force(act, ids, pos, k))


def test_nan_never_ranks_above_a_number() -> None:
    act = np.array([[np.nan, 1.0], [-1e30, np.nan], [np.nan, np.nan]], dtype=np.float32)
    top = RunningTopK(units=2, k=3)
    top.add(act, np.array([1, 2, 3]), np.zeros((3, 2), dtype=np.int32))
    assert top.image_ids.tolist() == [[2, 1, 3], [1, 2, 3]]
    assert top.values[0, 0] == np.float32(-1e30) and np.isnan(top.values[0, 1:]).all()
    top2 = RunningTopK(units=1, k=1)
    top2.add(np.array([[np.nan]], dtype=np.float32), np.array([0]), np.array([[0]]))
    top2.add(np.array([[-np.inf]], dtype=np.float32), np.array([5]), np.array([[0]]))
    assert top2.image_ids.tolist() == [[5]] and top2.values.tolist() == [[-np.inf]]


@pytest.mark.parametrize("seed", range(4))
def test_merge_of_partials_equals_one_pass(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    act, ids, pos = random_data(rng, n=80, units=4)
    split = int(rng.integers(0, 81))
    k = 7
    whole = RunningTopK(units=4, k=k)
    feed(whole, act, ids, pos, rng)
    left, right = RunningTopK(units=4, k=k), RunningTopK(units=4, k=k)
    feed(left, act[:split], ids[:split], pos[:split], rng)
    feed(right, act[split:], ids[split:], pos[split:], rng)
    right.merge(left)  # order of merging must not matter
    assert_same(right, (whole.values, whole.image_ids, whole.positions))
    assert_same(whole, brute_force(act, ids, pos, k))


def test_merge_into_empty_and_of_empty() -> None:
    rng = np.random.default_rng(9)
    act, ids, pos = random_data(rng, n=12, units=3)
    full = RunningTopK(units=3, k=4)
    full.add(act, ids, pos)
    empty = RunningTopK(units=3, k=4)
    empty.merge(full)
    assert_same(empty, (full.values, full.image_ids, full.positions))
    full.merge(RunningTopK(units=3, k=4))
    assert_same(full, brute_force(act, ids, pos, 4))


def test_ties_broken_by_smaller_image_id() -> None:
    top = RunningTopK(units=2, k=3)
    act = np.array([[5.0, 1.0], [5.0, 1.0], [5.0, 2.0], [5.0, 1.0]], dtype=np.float32)
    top.add(act[:2], np.array([40, 7]), np.array([[1, 1], [2, 2]]))
    top.add(act[2:], np.array([3, 90]), np.array([[3, 3], [4, 4]]))
    assert top.image_ids.tolist() == [[3, 7, 40], [3, 7, 40]]
    assert top.positions.tolist() == [[3, 2, 1], [3, 2, 1]]
    assert top.values.tolist() == [[5.0, 5.0, 5.0], [2.0, 1.0, 1.0]]


def test_large_ids_do_not_overflow() -> None:
    top = RunningTopK(units=1, k=2)
    big = np.array([2**63 - 1, 2**63 - 2, 1], dtype=np.int64)
    top.add(np.ones((3, 1), dtype=np.float32), big, np.zeros((3, 1), dtype=np.int32))
    assert top.image_ids.tolist() == [[1, 2**63 - 2]]


def test_fewer_images_than_k() -> None:
    top = RunningTopK(units=3, k=10)
    act = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.float32)
    top.add(act, np.array([11, 22]), np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32))
    assert top.values.shape == (3, 2)
    assert top.values.tolist() == [[3, 1], [2, 2], [3, 1]]
    assert top.image_ids.tolist() == [[22, 11], [11, 22], [11, 22]]
    assert top.positions.tolist() == [[3, 0], [1, 4], [2, 5]]


def test_new_top_k_is_empty() -> None:
    top = RunningTopK(units=4, k=5)
    assert top.values.shape == (4, 0) and top.image_ids.shape == (4, 0) and top.positions.shape == (4, 0)


def test_float64_input_is_stored_as_float32() -> None:
    top = RunningTopK(units=1, k=2)
    top.add(
        np.array([[0.1], [0.2]], dtype=np.float64), np.array([1, 2]), np.array([[0], [1]], dtype=np.int64)
    )
    assert top.values.dtype == np.float32
    assert top.values.tolist() == [[np.float32(0.2), np.float32(0.1)]]
    assert top.positions.dtype == np.int32


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_raises(k: int) -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        RunningTopK(units=3, k=k)


def brute_ties(act: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For every (unit, entry): the images of `act` (N, U) whose act equals the entry's (NaN equals NaN)."""
    out = np.zeros(values.shape, dtype=np.int64)
    for u in range(values.shape[0]):
        for j, value in enumerate(values[u]):
            column = act[:, u]
            out[u, j] = np.isnan(column).sum() if np.isnan(value) else (column == value).sum()
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 4, 9])
def test_ties_count_every_equal_image_through_batches_shards_tables_and_merges(seed: int, k: int) -> None:
    rng = np.random.default_rng(300 + seed)
    act, ids, pos = random_data(rng, n=90, units=5)  # 7 values and NaN: every list ends in a tie
    act[rng.random(act.shape) < 0.3] = 0.0
    act[rng.random(act.shape) < 0.1] = -0.0  # equal to 0.0
    batches = RunningTopK(units=5, k=k)
    feed(batches, act, ids, pos, rng)
    cuts = np.sort(rng.integers(0, 91, 3))
    shards = RunningTopK(units=5, k=k)
    for lo, hi in zip([0, *cuts], [*cuts, 90], strict=True):
        top = order_units(act[lo:hi], pos[lo:hi], ids[lo:hi]).top(k, lambda i, p: np.zeros((*i.shape, 4)))
        table = topk_table("l", top, width=7)  # a shard's partial, as written and read back
        shards.merge(read_topk(table, "l", 5, 7))
    for top in (batches, shards):
        assert_same(top, brute_force(act, ids, pos, k))
        expected = brute_ties(act, top.values)
        np.testing.assert_array_equal(top.result().ties(), expected)
        table = topk_table("l", top.result(), width=7).drop_columns(["layer"])  # the topk file
        np.testing.assert_array_equal(read_topk(table, "l", 5, 7).ties(), expected)
    assert (brute_ties(act, shards.values)[:, -1] > 1).all()  # the test exercises ties at rank k


def test_ties_by_hand() -> None:
    act = np.array([[6.0], [6.0], [6.0], [5.0], [6.0]], dtype=np.float32)
    top = RunningTopK(units=1, k=2)
    top.add(act[:2], np.array([1, 2]), np.zeros((2, 1), np.int32))
    top.add(act[2:], np.array([3, 4, 5]), np.zeros((3, 1), np.int32))
    assert top.image_ids.tolist() == [[1, 2]]
    assert top.result().ties().tolist() == [[4, 4]]  # two more images at 6.0 were left out
