"""A report's crops drawn in parallel from shared originals are the crops the grid draws one at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from actindex.queries.db import unit_tops
from actindex.queries.drawing import Crop, Drawing, draw_crops, save_crop
from actindex.queries.grid import MISSING, crop_tile
from actindex.queries.masks import layer_mask_maps, masked_tile, unit_mask_maps

LAYERS = {"relu1": [0, 1], "relu2": [1, 0], "head": [0]}  # head: max pooling under a Linear, no map


@pytest.fixture(scope="module")
def rows(planted_index):
    summary, _, _ = planted_index
    tables = [unit_tops(summary.out, layer, units, 3).rows for layer, units in LAYERS.items()]
    return summary.out, pa.concat_tables(tables)


def test_every_layer_in_one_pass_gives_the_maps_of_a_call_per_layer(rows):
    index, table = rows
    together = layer_mask_maps(index, table, trust_code=True, map_images=ThreadPoolExecutor(3).map)
    assert list(together.refused) == ["head"] and "without --mask" in str(together.refused["head"])
    for layer in ("relu1", "relu2"):
        alone = unit_mask_maps(index, table.filter(pa.compute.equal(table["layer"], layer)), trust_code=True)
        assert [key for key in together.maps if key[0] == layer] == list(alone)
        for key, items in alone.items():
            for mine, theirs in zip(together.maps[key], items, strict=True):
                assert mine.row == theirs.row and mine.threshold == theirs.threshold
                np.testing.assert_array_equal(mine.fmap, theirs.fmap)


@pytest.mark.parametrize("workers", [1, 3])
def test_the_files_are_the_grids_tiles_whatever_the_threads(rows, tmp_path, workers):
    index, table = rows
    maps = layer_mask_maps(index, table, trust_code=True).maps
    gone = {**table.to_pylist()[0], "uri": str(tmp_path / "gone.png")}  # a file removed since indexing
    crops, expected = [], []
    for i, row in enumerate([*table.to_pylist(), gone]):
        mask = next((m for m in maps.get((row["layer"], row["unit"]), []) if m.row == row), None)
        crops.append(Crop(tmp_path / f"{i}.png", row, mask))
        expected.append(crop_tile(row, 24) if mask is None else masked_tile(mask, 24, "highlight"))
    done = []
    with ThreadPoolExecutor(workers) as pool:
        draw_crops(crops, Drawing(24, "highlight", "fast"), pool, done.append)
    assert (
        sum(done) == len(crops)
        and any(c.mask is not None for c in crops)
        and any(c.mask is None for c in crops)
    )
    for i, (crop, tile) in enumerate(zip(crops, expected, strict=True)):
        save_crop(tile, tmp_path / f"expected{i}")
        assert crop.file.read_bytes() == (tmp_path / f"expected{i}").read_bytes(), crop.row
    assert (np.asarray(expected[-1]) == MISSING).all()  # the file gone: its crop grey, as the grid draws it
