"""Shard finishing: per-unit ordering against a Python sort, the activations table row by row, top-k."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from actindex.pipeline import schema
from actindex.pipeline.finish import activations_table, order_units
from actindex.pipeline.layout import write_activations
from actindex.pipeline.topk import descending_keys
from tests.pipeline.test_topk import brute_force, random_data


def test_keys_sort_floats_descending_with_nan_last_and_signed_zeros_equal():
    values = np.array(
        [np.nan, 1.0, -np.inf, 0.0, np.inf, -0.0, 1e-45, -1e-45, -1.0, 3.4e38, -3.4e38, -np.nan], np.float32
    )
    keys = descending_keys(values)
    assert keys.dtype == np.int64 and keys.min() >= 0 and keys.max() < 2**32
    order = np.argsort(keys, kind="stable")
    ranked = values[order]
    numbers = ranked[~np.isnan(ranked)]
    assert (np.diff(numbers) <= 0).all() and np.isnan(ranked[-2:]).all()
    assert keys[3] == keys[5]  # 0.0 and -0.0 tie (then image_id decides, as in RunningTopK)
    assert keys[0] == keys[-1]  # every NaN ties, after everything


@pytest.mark.parametrize("seed", range(5))
def test_order_units_equals_a_python_sort(seed):
    rng = np.random.default_rng(seed)
    act, ids, pos = random_data(rng, int(rng.integers(1, 40)), int(rng.integers(1, 7)))
    act[rng.random(act.shape) < 0.1] = -0.0
    ordered = order_units(act, pos, ids)
    values, want_ids, positions = brute_force(act, ids, pos, k=len(ids))
    np.testing.assert_array_equal(ordered.act, values)
    np.testing.assert_array_equal(ordered.ids[ordered.index], want_ids)
    np.testing.assert_array_equal(ordered.pos, positions)
    assert (np.diff(ordered.ids) > 0).all() and ordered.rows == act.size


def test_top_is_the_first_k_with_boxes_from_the_given_function():
    rng = np.random.default_rng(7)
    act, ids, pos = random_data(rng, 12, 3)
    ordered = order_units(act, pos, ids)
    calls = []

    def boxes_for(index, positions):
        calls.append((index.shape, positions.shape))
        return np.stack([index, positions, index + 1, positions + 1], axis=2).astype(np.int32)

    top = ordered.top(4, boxes_for)
    values, want_ids, positions = brute_force(act, ids, pos, k=4)
    np.testing.assert_array_equal(top.values, values)
    np.testing.assert_array_equal(top.image_ids, want_ids)
    np.testing.assert_array_equal(top.positions, positions)
    assert calls == [((3, 4), (3, 4))]
    np.testing.assert_array_equal(top.boxes[:, :, 1], positions)  # the boxes of exactly these peaks
    np.testing.assert_array_equal(ordered.ids[top.boxes[:, :, 0]], want_ids)


def test_activations_table_rows_by_unit_then_act_then_image_id(tmp_path):
    rng = np.random.default_rng(0)
    n, units, width = 9, 4, 5
    image_ids = rng.choice(10_000, n, replace=False).astype(np.int64)
    act = rng.integers(0, 3, (n, units)).astype(np.float32)  # many ties
    pos = rng.integers(0, width * 3, (n, units)).astype(np.int32)
    table = activations_table(order_units(act, pos, image_ids), width)
    expected = sorted(
        (u, -float(act[i, u]), int(image_ids[i]), int(pos[i, u]) // width, int(pos[i, u]) % width)
        for i in range(n)
        for u in range(units)
    )
    write_activations(table, tmp_path / "a.parquet", {})
    for got in (table.to_pydict(), pq.read_table(tmp_path / "a.parquet").to_pydict()):
        rows = list(
            zip(got["unit"], [-a for a in got["act"]], got["image_id"], got["y"], got["x"], strict=True)
        )
        assert rows == expected
    assert table.schema.names == schema.in_files("activations").names  # the layer is the directory


def test_activations_table_position_conversion_by_hand():
    ordered = order_units(
        np.array([[1.0], [2.0]], dtype=np.float32), np.array([[13], [6]], dtype=np.int32), np.array([10, 20])
    )
    assert activations_table(ordered, width=7).to_pydict() == {
        "image_id": [20, 10],
        "unit": [0, 0],
        "act": [2.0, 1.0],
        "y": [0, 1],
        "x": [6, 6],
    }


def test_a_shard_without_ok_images_gives_an_empty_table():
    ordered = order_units(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros(0, np.int64))
    assert activations_table(ordered, 4).num_rows == 0 and ordered.index.shape == (3, 0)
