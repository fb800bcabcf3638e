"""Occlusion maps: where the drop is, what a window outside the object does, and how they batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actindex.pipeline.attribution.occlusion import default_window, occlusion, window_boxes
from actindex.pipeline.attribution.targets import Targets
from actindex.pipeline.errors import InvalidInputError
from tests.pipeline.attribution.conftest import SIDE, RedNet, layer_output, red_images, square_mask, top_rows

# relu3's receptive field: 30 px, every 4 px, the first starting at -13 (conv1 3, pool 2, conv2 5, pool2 2,
# conv3 5: pipeline.receptive_field computes the same for the index)
RF_SIZE, RF_JUMP, RF_START = 30, 4, -13


def rf_boxes(targets: Targets) -> np.ndarray:
    x0, y0 = RF_START + RF_JUMP * targets.x, RF_START + RF_JUMP * targets.y
    return np.stack([x0, y0, x0 + RF_SIZE, y0 + RF_SIZE], axis=1)


@pytest.fixture(scope="module")
def red_occlusion():
    model, images = RedNet().eval(), red_images()
    targets = top_rows(model, "relu3", images, units=[0])
    return targets, occlusion(model, "relu3", images, targets, rf_boxes(targets))


def test_the_largest_drop_lies_on_the_red_square(red_occlusion):
    targets, out = red_occlusion
    for row, image in enumerate(targets.image):
        x0, y0, x1, y1 = out.boxes[row]
        y, x = np.unravel_index(np.argmax(out.maps[row]), out.maps[row].shape)
        assert square_mask(image)[y0 + y, x0 + x], f"image {image}: largest drop at ({x0 + x}, {y0 + y})"
        assert out.maps[row].shape == (y1 - y0, x1 - x0)
        assert out.drops[row].max() > 0.5 * out.values[row]  # hiding the square's middle hurts


def test_a_window_off_the_square_changes_little(red_occlusion):
    targets, out = red_occlusion
    for row, image in enumerate(targets.image):
        square = square_mask(image)
        off = [not square[y0:y1, x0:x1].any() for x0, y0, x1, y1 in out.windows[row]]
        assert sum(off) >= 4, "the test needs windows off the square"
        assert np.abs(out.drops[row][off]).max() < 0.01 * out.values[row]


def test_the_map_is_the_mean_drop_of_a_plain_loop():
    model, images = RedNet().eval(), red_images()
    targets = top_rows(model, "relu3", images, units=[0], k=1)
    box = rf_boxes(targets)
    out = occlusion(model, "relu3", images, targets, box, window=6, stride=4, batch_size=5)
    unit, y, x = int(targets.unit[0]), int(targets.y[0]), int(targets.x[0])
    image = images[targets.image[0]]
    base = float(layer_output(model, "relu3", image[None])[0, unit, y, x])
    x0, y0, x1, y1 = np.clip(box[0], 0, SIDE)
    total, count = np.zeros((y1 - y0, x1 - x0)), np.zeros((y1 - y0, x1 - x0))
    for wx0, wy0, wx1, wy1 in window_boxes((x0, y0, x1, y1), 6, 4):
        hidden = image.clone()
        hidden[:, wy0:wy1, wx0:wx1] = 0.0  # grey: the preprocessing mean, 0 once normalized
        drop = base - float(layer_output(model, "relu3", hidden[None])[0, unit, y, x])
        total[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0] += drop
        count[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0] += 1
    assert out.values[0] == pytest.approx(base)
    np.testing.assert_allclose(out.maps[0], total / count, rtol=1e-5, atol=1e-6)


def test_rows_at_one_position_share_their_forwards():
    model, images = RedNet().eval(), red_images()
    both = Targets(image=[0, 0], unit=[0, 1], y=[5, 5], x=[4, 4])  # two units, one image, one position
    boxes = rf_boxes(both)
    out = occlusion(model, "relu3", images, both, boxes, batch_size=1000)
    single = occlusion(model, "relu3", images, Targets(image=[0], unit=[1], y=[5], x=[4]), boxes[1:])
    assert out.forward_passes == 1 and len(out.windows[0]) + 1 <= 1000
    np.testing.assert_allclose(out.maps[1], single.maps[0], atol=1e-6)


def test_windows_cover_the_box():
    assert default_window(30, 30) == (8, 4)
    assert default_window(3, 200) == (1, 1)
    windows = window_boxes((3, 7, 33, 30), 8, 4)
    covered = np.zeros((64, 64), int)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0, y1 - y0) == (8, 8)
        covered[y0:y1, x0:x1] += 1
    assert covered[7:30, 3:33].min() >= 1 and covered.sum() == 64 * len(windows)
    assert {tuple(w) for w in windows[[0, -1]]} == {(3, 7, 11, 15), (25, 22, 33, 30)}


def test_refusals():
    model, images = RedNet().eval(), red_images()
    one = Targets(image=[0], unit=[0], y=[0], x=[0])
    with pytest.raises(InvalidInputError, match=r"boxes must be \(1, 4\)"):
        occlusion(model, "relu3", images, one, np.zeros((2, 4)))
    with pytest.raises(InvalidInputError, match="lies outside"):
        occlusion(model, "relu3", images, one, np.array([[70, 70, 90, 90]]))
    with pytest.raises(InvalidInputError, match="at least 1 px"):
        occlusion(model, "relu3", images, one, np.array([[0, 0, 8, 8]]), window=0)
    with torch.no_grad():
        assert occlusion(model, "relu3", images, one, np.array([[-9, -9, 4, 4]])).maps[0].shape == (4, 4)
