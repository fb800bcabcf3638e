"""Shared fixtures: a CNN with planted detectors, synthetic images with known content, scikit-image photos.

The planted network (input normalized with mean 0, std 1, so pixels are in [0, 1]):
  conv1 unit 0 fires on red (R - G - B over a 3x3 window), unit 1 on a dark-to-bright vertical edge;
  relu1 -> pool (2x2) -> conv2 (5x5, center-weighted: units follow conv1's) -> relu2 -> head (B, 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from actindex.pipeline.preprocess import Preprocessing

PLANTED_PREP = Preprocessing(resize=64, crop=64, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1))
IMAGE_W, IMAGE_H = (
    128,
    96,
)  # originals: resize 96 -> 64 (x 85), crop left 10: boxes must map back through both
SQUARE = 12  # red square side in original pixels (8 in model input)
GRAY = (128, 128, 128)


class PlantedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 2, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2, 2))
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[0, 0], self.conv1.weight[0, 1:] = 1 / 9, -1 / 9  # red: R - G - B
            self.conv1.weight[1, :, :, 0], self.conv1.weight[1, :, :, 2] = (
                -1 / 9,
                1 / 9,
            )  # dark left, bright right
            # -0.6 keeps unit 1 quiet where zero padding meets an ordinary image's left border
            self.conv1.bias.copy_(torch.tensor([-0.5, -0.6]))
            bump = torch.tensor([0.25, 0.5, 1.0, 0.5, 0.25])
            self.conv2.weight.zero_()
            self.conv2.weight[0, 0] = self.conv2.weight[1, 1] = torch.outer(bump, bump)
            self.conv2.bias.zero_()
            self.head[2].weight.copy_(torch.eye(2))
            self.head[2].bias.zero_()

    def forward(self, x):
        return self.head(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x))))))


def planted_images(folder: Path) -> dict[str, dict]:
    """Write the synthetic dataset; returns {relpath: what was planted where (original pixels)}."""
    truth: dict[str, dict] = {}
    for i, (x, y) in enumerate([(30, 20), (70, 50), (50, 70)]):
        img = np.full((IMAGE_H, IMAGE_W, 3), GRAY, dtype=np.uint8)
        img[y : y + SQUARE, x : x + SQUARE] = (240 - 40 * i, 10, 10)  # red0 is the reddest
        truth[_save(folder, f"red/red{i}.png", img)] = {"kind": "red", "box": (x, y, x + SQUARE, y + SQUARE)}
    for i, column in enumerate([40, 64, 90]):
        img = np.zeros((IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
        img[:, column:] = 255 - 25 * i  # edge0 is the strongest edge
        truth[_save(folder, f"edge/edge{i}.png", img)] = {"kind": "edge", "column": column}
    for i in range(3):
        noise = np.random.default_rng(i).random((IMAGE_H // 8, IMAGE_W // 8, 3)) * 60 + 100
        img = np.asarray(
            Image.fromarray(noise.astype(np.uint8)).resize((IMAGE_W, IMAGE_H), Image.Resampling.BILINEAR)
        )
        truth[_save(folder, f"plain/plain{i}.png", img)] = {"kind": "plain"}
    return truth


def _save(folder: Path, relpath: str, pixels: np.ndarray) -> str:
    (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / relpath)
    return relpath


@pytest.fixture(scope="session")
def planted_dataset(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("planted_images")
    return folder, planted_images(folder)


def natural_image(seed: int, width: int, height: int) -> Image.Image:
    """Smooth random colour fields with a few shapes: natural-looking enough to give varied activations."""
    rng = np.random.default_rng(seed)
    base = rng.random((max(2, height // 16), max(2, width // 16), 3)) * 255
    img = Image.fromarray(base.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(img).copy()
    for _ in range(3):
        x, y = rng.integers(0, width - 8), rng.integers(0, height - 8)
        pixels[y : y + rng.integers(4, 20), x : x + rng.integers(4, 20)] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def natural_dataset(tmp_path_factory) -> Path:
    """14 synthetic images of assorted sizes and formats in two class folders."""
    folder = tmp_path_factory.mktemp("natural")
    sizes = [(96, 80), (80, 96), (120, 90), (64, 64), (150, 100), (100, 150), (90, 70)]
    for i in range(14):
        label = "a" if i % 2 else "b"
        (folder / label).mkdir(exist_ok=True)
        ext = ".jpg" if i % 3 else ".png"
        natural_image(i, *sizes[i % len(sizes)]).save(folder / label / f"img{i:02d}{ext}")
    return folder


@pytest.fixture(scope="session")
def skimage_photos(tmp_path_factory) -> Path:
    from actindex.jobs.demo import copy_demo_photos

    folder = tmp_path_factory.mktemp("skimage_photos")
    copy_demo_photos(folder)
    return folder


def pytest_collection_modifyitems(items):
    """The tests on a Ray cluster of several nodes (fixture ray_cluster) run after all others (of their
    worker, under pytest-xdist): connecting this process to that cluster ends its local Ray (ray_local), and
    starting that again costs seconds."""
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))  # stable: else as found


@pytest.fixture(scope="session", autouse=True)
def fault_flags(tmp_path_factory):
    """tests/faults.py's flags in a folder of this session's own, set before any Ray or job starts (they
    inherit it): another test session on the same machine cannot take a flag armed here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACTINDEX_TEST_FAULTS_DIR", str(tmp_path_factory.mktemp("fault_flags")))
        yield


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the tests that need it (2 CPUs, like CI)."""
    import ray

    from actindex.jobs.ray_executor import init_ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token written by the tests
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_ray(None)
    yield
    ray.shutdown()


PLANTED = "python:tests.conftest:PlantedNet"


@pytest.fixture(scope="session")
def ray_index(ray_local, natural_dataset, tmp_path_factory):
    from actindex.jobs.indexing import run_index
    from tests.jobs.test_index_reference import index_config

    out = tmp_path_factory.mktemp("local_ray")
    summary = run_index(index_config(natural_dataset, out, executor="ray"))
    assert summary.indexed == 14 and summary.failed == 0
    return out


@pytest.fixture(scope="session")
def planted_index(planted_dataset, tmp_path_factory):
    from actindex.jobs.indexing import run_index
    from actindex.jobs.spec import IndexRequest
    from actindex.queries.db import connect

    folder, truth = planted_dataset
    out = tmp_path_factory.mktemp("planted_index")
    config = IndexRequest(
        source=str(folder),
        out=str(out),
        model=PLANTED,
        layers=("relu1", "relu2", "head"),
        preprocessing=PLANTED_PREP,
        trust_code=True,
        k=3,
        batch_size=4,
        shard_size=4,
        executor="local",
        progress=False,
    )
    return run_index(config), connect(out), truth


@pytest.fixture(scope="session")
def natural_reference(natural_dataset):
    """natural_dataset's activations by the brute-force loop of tests/jobs/test_index_reference.py."""
    from tests.jobs.test_index_reference import reference

    return reference(natural_dataset)


@pytest.fixture(scope="session")
def local_index_dir(natural_dataset, tmp_path_factory):
    """natural_dataset indexed by the plain loop with resnet18 (the reference test's configuration)."""
    from actindex.jobs.indexing import run_index
    from tests.jobs.test_index_reference import index_config

    out = tmp_path_factory.mktemp("local_index")
    run_index(index_config(natural_dataset, out, executor="local"))
    return out
