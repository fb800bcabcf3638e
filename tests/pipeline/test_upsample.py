"""Feature maps laid over the originals: linear ramps come back as the coordinates they encode."""

from __future__ import annotations

import numpy as np
import pytest

from actindex.pipeline.geometry import ReceptiveField
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.upsample import seen_box, to_original

# 128x96 originals resized to 85x64, then cropped to 64 at left 10 (the planted dataset's geometry)
PREP = Preprocessing(resize=64, crop=64, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1))
WIDTH, HEIGHT = 128, 96
IDENTITY = ReceptiveField(1, 1, 1, 1, 0, 0, is_global=False)  # position i is model-input pixel i


def _input_x(ox: np.ndarray) -> np.ndarray:
    """The model-input x (pixel centres at integers) of original pixel centres: scale 85/128, crop at 10."""
    return (ox + 0.5) * 85 / 128 - 0.5 - 10


def test_the_seen_box_is_the_crop_in_original_pixels():
    # x: [10, 74) of 85 resized pixels is [15.06, 111.4) of 128, rounded outwards; y: all 96 rows
    assert seen_box(PREP, WIDTH, HEIGHT) == (15, 0, 112, 96)


def test_a_ramp_of_model_input_columns_returns_each_original_pixels_input_coordinate():
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))  # value = model-input x
    values = to_original(ramp, IDENTITY, PREP, WIDTH, HEIGHT)
    assert values.shape == (HEIGHT, WIDTH) and values.dtype == np.float32
    x = np.arange(15, 112)
    expected = np.clip(_input_x(x), 0, 63)  # linear interpolation reproduces a linear map exactly
    np.testing.assert_allclose(values[:, 15:112], np.tile(expected, (HEIGHT, 1)), atol=1e-5)
    assert np.isnan(values[:, :15]).all() and np.isnan(values[:, 112:]).all()  # never seen


def test_positions_sit_at_their_receptive_field_centres():
    # a stride-2 layer whose position i sees input pixels 2i-1 .. 2i+2: centred on 2i + 0.5
    rf = ReceptiveField(4, 4, 2, 2, -1, -1, is_global=False)
    centres = np.arange(32, dtype=np.float32) * 2 + 0.5
    values = to_original(np.tile(centres[:, None], (1, 32)), rf, PREP, WIDTH, HEIGHT)
    y = np.arange(HEIGHT)
    expected = np.clip((y + 0.5) * 64 / 96 - 0.5, 0.5, 62.5)  # rows: scale 64/96, no crop offset
    np.testing.assert_allclose(values[:, 50], expected, atol=1e-5)


def test_positions_of_a_global_layer_tile_the_input_evenly():
    rf = ReceptiveField(64, 64, 64, 64, 0, 0, is_global=True)
    centres = (np.arange(4, dtype=np.float32) + 0.5) * 16 - 0.5  # 4 cells of 16 pixels
    values = to_original(np.tile(centres, (4, 1)), rf, PREP, WIDTH, HEIGHT)
    x = np.arange(15, 112)
    np.testing.assert_allclose(values[40, 15:112], np.clip(_input_x(x), 7.5, 55.5), atol=1e-5)


@pytest.mark.parametrize("box", [(28, 16, 47, 35), (0, 0, 20, 10), (100, 90, 128, 96)])
def test_a_box_is_the_same_pixels_as_the_whole_map(box):
    fmap = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    rf = ReceptiveField(12, 12, 2, 2, -5, -5, is_global=False)
    whole = to_original(fmap, rf, PREP, WIDTH, HEIGHT)
    x0, y0, x1, y1 = box
    part = to_original(fmap, rf, PREP, WIDTH, HEIGHT, box)
    np.testing.assert_allclose(part, whole[y0:y1, x0:x1], rtol=1e-6)  # NaN where NaN
