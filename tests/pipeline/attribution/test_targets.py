"""Targets' checks, and the batch plan: every row once, one row per image per slot, images forwarded once."""

from __future__ import annotations

import numpy as np
import pytest

from actindex.pipeline.attribution.targets import Targets, plan_batches
from actindex.pipeline.errors import InvalidInputError


def test_from_positions_reads_the_recorders_flat_positions():
    targets = Targets.from_positions(image=[0, 1], unit=[7, 7], pos=[9, 4], width=4)
    assert targets.y.tolist() == [2, 1] and targets.x.tolist() == [1, 0]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 100])
def test_plan_covers_every_row_once(batch_size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 9, size=40)
    batches = plan_batches(image, batch_size)
    seen = np.concatenate([rows for batch in batches for rows, _ in batch.slots])
    assert sorted(seen.tolist()) == list(range(40))
    forwarded = np.concatenate([batch.images for batch in batches])
    assert sorted(forwarded.tolist()) == sorted(set(image.tolist()))  # each image in one forward pass
    for batch in batches:
        assert len(batch.images) <= batch_size
        for rows, pos in batch.slots:
            assert (batch.images[pos] == image[rows]).all()  # a row's image is where the slot says
            assert len(set(pos.tolist())) == len(pos)  # one row per image per slot


def test_plan_groups_images_with_many_rows():
    # image 5 has 3 rows, image 2 has 2, the others 1: the busiest images share a pass
    image = [0, 5, 1, 5, 2, 5, 2, 3]
    batches = plan_batches(image, 2)
    assert batches[0].images.tolist() == [5, 2] and len(batches[0].slots) == 3
    assert sum(len(batch.slots) for batch in batches) == 3 + 1 + 1


def test_bad_targets_are_refused():
    with pytest.raises(InvalidInputError, match="differ in length"):
        Targets(image=[0, 1], unit=[0], y=[0], x=[0])
    with pytest.raises(InvalidInputError, match="negative"):
        Targets(image=[0], unit=[-1], y=[0], x=[0])
    with pytest.raises(InvalidInputError, match="integers"):
        Targets(image=[0.5], unit=[0], y=[0], x=[0])
    with pytest.raises(InvalidInputError, match="only 2 images"):
        Targets(image=[2], unit=[0], y=[0], x=[0]).check_images(2)
    with pytest.raises(InvalidInputError, match="x 4 >= width 4"):
        Targets(image=[0], unit=[0], y=[0], x=[4]).check((1, 3, 4, 4), "layer1")
    with pytest.raises(InvalidInputError, match="at least 1"):
        plan_batches([0], 0)
