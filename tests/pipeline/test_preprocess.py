"""Preprocessing geometry checked against torchvision; to_original checked against the decoder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from actindex.pipeline.decode import Decoder
from actindex.pipeline.preprocess import Preprocessing

SIZES = [(500, 375), (375, 500), (333, 777), (64, 64), (777, 333), (101, 100)]
PREPS = [(64, 64), (73, 61), (100, 37)]
TV_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def noise_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[height // 3 : height // 3 + 5, width // 4 : width // 4 + 7] = (255, 0, 255)  # a distinctive block
    return pixels


def torchvision_pixels(path: Path, resize: int, crop: int, interpolation: str) -> np.ndarray:
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    pipeline = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=TV_INTERPOLATION[interpolation]),
            transforms.CenterCrop(crop),
        ]
    )
    out = np.asarray(pipeline(upright))
    assert out.shape == (crop, crop, 3)
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize(("resize", "crop"), PREPS)
def test_decoder_pixels_equal_torchvision_resize_center_crop(
    tmp_path: Path, width: int, height: int, resize: int, crop: int
) -> None:
    path = tmp_path / "img.png"
    Image.fromarray(noise_image(width, height)).save(path)
    prep = Preprocessing(resize=resize, crop=crop, interpolation="nearest")
    decoded = Decoder(prep)(str(path))
    assert decoded.error is None
    assert (decoded.width, decoded.height) == (width, height)
    assert np.array_equal(decoded.pixels, torchvision_pixels(path, resize, crop, "nearest"))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_decoder_pixels_equal_torchvision_for_smooth_filters(tmp_path: Path, interpolation: str) -> None:
    path = tmp_path / "img.png"
    Image.fromarray(noise_image(333, 250, seed=3)).save(path)
    prep = Preprocessing(resize=73, crop=61, interpolation=interpolation)
    assert np.array_equal(Decoder(prep)(str(path)).pixels, torchvision_pixels(path, 73, 61, interpolation))


@pytest.mark.parametrize("orientation", [6, 8])
def test_decoder_equals_torchvision_on_the_exif_upright_image(tmp_path: Path, orientation: int) -> None:
    img = Image.fromarray(noise_image(120, 90, seed=orientation))
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=90)
    prep = Preprocessing(resize=50, crop=41, interpolation="nearest")
    decoded = Decoder(prep)(str(path))
    assert (decoded.width, decoded.height) == (90, 120)
    assert np.array_equal(decoded.pixels, torchvision_pixels(path, 50, 41, "nearest"))


def test_resized_size_equals_torchvision_output_size() -> None:
    for resize in (7, 17, 224):
        prep = Preprocessing(resize=resize, crop=min(resize, 5))
        resize_op = transforms.Resize(resize, interpolation=InterpolationMode.NEAREST)
        for width in (1, 2, 3, 5, 7, 10, 13, 17, 31, 100, 333, 375, 500, 777):
            for height in (1, 3, 6, 7, 11, 17, 29, 100, 333, 375, 500):
                out = resize_op(Image.new("L", (width, height)))
                assert prep.resized_size(width, height) == out.size, (resize, width, height)


def test_crop_origin_equals_torchvision_center_crop() -> None:
    for crop in (1, 4, 5, 37):
        prep = Preprocessing(resize=64, crop=crop)
        for width in range(crop, crop + 12):
            for height in (crop, crop + 1, crop + 2, crop + 5, crop + 30, crop + 31):
                ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
                cropped = TF.center_crop(torch.stack([ys, xs]), [crop, crop])
                top, left = int(cropped[0, 0, 0]), int(cropped[1, 0, 0])
                assert prep.crop_origin(width, height) == (left, top), (crop, width, height)


def coordinate_image(width: int, height: int) -> np.ndarray:
    """Each pixel encodes its own (x, y): after a nearest resize we can read which pixel was sampled."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs & 255, ys & 255, (xs >> 8) | ((ys >> 8) << 4)], axis=-1).astype(np.uint8)


def sampled_sources(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = pixels.astype(np.int64)
    return p[0] | ((p[2] & 15) << 8), p[1] | ((p[2] >> 4) << 8)


@pytest.mark.parametrize(("width", "height"), [(400, 300), (300, 400), (333, 777), (500, 375), (64, 64)])
@pytest.mark.parametrize(("resize", "crop"), [(128, 112), (61, 37)])
def test_to_original_covers_exactly_the_pixels_the_decoder_sampled(
    tmp_path: Path, width: int, height: int, resize: int, crop: int
) -> None:
    """For random boxes in the crop: the mapped box holds every original pixel the decoder put into the box,
    and is larger by at most ceil(scale) pixels on each side."""
    prep = Preprocessing(resize=resize, crop=crop, interpolation="nearest")
    path = tmp_path / "coords.png"
    Image.fromarray(coordinate_image(width, height)).save(path)
    src_x, src_y = sampled_sources(Decoder(prep)(str(path)).pixels)
    rw, rh = prep.resized_size(width, height)
    slack = math.ceil(max(width / rw, height / rh))

    rng = np.random.default_rng(width * 7 + crop)
    boxes = []
    for _ in range(100):
        x0, x1 = sorted(rng.choice(crop + 1, 2, replace=False))
        y0, y1 = sorted(rng.choice(crop + 1, 2, replace=False))
        boxes.append((x0, y0, x1, y1))
    boxes.append((0, 0, crop, crop))
    out = prep.to_original(np.array(boxes), np.full(len(boxes), width), np.full(len(boxes), height))
    assert out.shape == (len(boxes), 4)
    for (x0, y0, x1, y1), (ox0, oy0, ox1, oy1) in zip(boxes, out, strict=True):
        sx, sy = src_x[y0:y1, x0:x1], src_y[y0:y1, x0:x1]
        need = (sx.min(), sy.min(), sx.max() + 1, sy.max() + 1)
        assert ox0 <= need[0] and oy0 <= need[1] and ox1 >= need[2] and oy1 >= need[3]
        assert need[0] - ox0 <= slack and need[1] - oy0 <= slack
        assert ox1 - need[2] <= slack and oy1 - need[3] <= slack
        assert 0 <= ox0 < ox1 <= width and 0 <= oy0 < oy1 <= height


def find_box(channel: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(channel)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize(
    "square", [(180, 140, 20), (233, 135, 34), (119, 40, 12), (300, 250, 9), (70, 100, 5)]
)
def test_to_original_recovers_a_planted_square(tmp_path: Path, square: tuple[int, int, int]) -> None:
    width, height = 400, 300
    x, y, side = square
    original = np.zeros((height, width), dtype=np.uint8)
    original[y : y + side, x : x + side] = 255
    path = tmp_path / "square.png"
    Image.fromarray(original).save(path)
    prep = Preprocessing(resize=128, crop=112, interpolation="nearest")
    box = find_box(Decoder(prep)(str(path)).pixels[0])
    (ox0, oy0, ox1, oy1) = prep.to_original(np.array([box]), np.array([width]), np.array([height]))[0]

    scale = max(width / 170, height / 128)  # 400x300 -> 170x128
    # a nearest resize samples one pixel per step of `scale`, so up to half a step at each edge of the square
    # may go unsampled (the network never saw it); beyond that the box must hold the whole square
    missed = math.ceil(scale / 2)
    assert ox0 <= x + missed and oy0 <= y + missed
    assert ox1 >= x + side - missed and oy1 >= y + side - missed
    # ... and exceed it by at most ceil(scale) on each side
    grow = math.ceil(scale)
    assert ox0 >= x - grow and oy0 >= y - grow
    assert ox1 <= x + side + grow and oy1 <= y + side + grow


def test_to_original_square_partly_cropped_away(tmp_path: Path) -> None:
    """The crop of a 400x300 image at resize 128 / crop 112 starts at original x = 68.2; a square at x 30..100
    is seen only from there on, so its box starts at the crop's left edge, not at 30."""
    width, height = 400, 300
    original = np.zeros((height, width), dtype=np.uint8)
    original[120:160, 30:100] = 255
    path = tmp_path / "edge.png"
    Image.fromarray(original).save(path)
    prep = Preprocessing(resize=128, crop=112, interpolation="nearest")
    box = find_box(Decoder(prep)(str(path)).pixels[0])
    assert box[0] == 0  # touches the crop's left edge
    (ox0, oy0, ox1, oy1) = prep.to_original(np.array([box]), np.array([width]), np.array([height]))[0]
    footprint = prep.to_original(np.array([[0, 0, 112, 112]]), np.array([width]), np.array([height]))[0]
    assert ox0 == footprint[0] == math.floor(29 * width / 170)  # crop origin 29 in the 170-wide resize
    assert 98 <= ox1 <= 103 and 117 <= oy0 <= 122 and 158 <= oy1 <= 163


def test_to_original_clips_boxes_to_the_crop_footprint() -> None:
    prep = Preprocessing(resize=128, crop=112)
    w, h = np.array([400]), np.array([300])
    # resized 170x128, crop origin (29, 8), scale 400/170 and 300/128
    footprint = prep.to_original(np.array([[0, 0, 112, 112]]), w, h)[0]
    assert footprint.tolist() == [
        math.floor(29 * 400 / 170),
        math.floor(8 * 300 / 128),
        math.ceil(141 * 400 / 170),
        math.ceil(120 * 300 / 128),
    ]
    outside = prep.to_original(np.array([[-50, -7, 500, 1000]]), w, h)[0]
    assert outside.tolist() == footprint.tolist()
    partly = prep.to_original(np.array([[-10, 50, 20, 200]]), w, h)[0]
    clipped = prep.to_original(np.array([[0, 50, 20, 112]]), w, h)[0]
    assert partly.tolist() == clipped.tolist()
    assert partly[0] == footprint[0] and partly[3] == footprint[3]


def test_to_original_stays_inside_the_image() -> None:
    rng = np.random.default_rng(5)
    for resize, crop in [(256, 224), (128, 112), (37, 37), (10, 3)]:
        prep = Preprocessing(resize=resize, crop=crop)
        n = 300
        widths = rng.integers(1, 2000, n)
        heights = rng.integers(1, 2000, n)
        boxes = np.sort(rng.integers(-crop, 2 * crop, (n, 2, 2)), axis=2).transpose(0, 2, 1).reshape(n, 4)
        out = prep.to_original(boxes, widths, heights)
        assert out.dtype == np.int32
        assert np.all(out[:, 0] >= 0) and np.all(out[:, 1] >= 0)
        assert np.all(out[:, 2] <= widths) and np.all(out[:, 3] <= heights)
        assert np.all(out[:, 0] <= out[:, 2]) and np.all(out[:, 1] <= out[:, 3])


def test_to_original_rounds_outwards_from_the_exact_fraction() -> None:
    """Each end is floor / ceil of the exact rational position, so a whole-number end is never widened."""
    from fractions import Fraction

    rng = np.random.default_rng(11)
    prep = Preprocessing(resize=72, crop=64)
    widths, heights = rng.integers(64, 3000, 500), rng.integers(64, 3000, 500)
    widths[0], heights[0] = (
        200,
        150,
    )  # resized 96 x 72: crop x 44 lands on original x (44 + 16) * 200 / 96 = 125
    boxes = np.sort(rng.integers(0, 65, (500, 2, 2)), axis=2).transpose(0, 2, 1).reshape(500, 4)
    boxes[0] = (0, 0, 44, 64)
    out = prep.to_original(boxes, widths, heights)
    assert out[0].tolist() == [33, 8, 125, 142]
    for (x0, y0, x1, y1), w, h, got in zip(boxes, widths, heights, out, strict=True):
        rw, rh = prep.resized_size(int(w), int(h))
        left, top = prep.crop_origin(rw, rh)
        fx, fy = Fraction(int(w), rw), Fraction(int(h), rh)
        want = (
            max(0, math.floor((x0 + left) * fx)),
            max(0, math.floor((y0 + top) * fy)),
            min(w, math.ceil((x1 + left) * fx)),
            min(h, math.ceil((y1 + top) * fy)),
        )
        assert got.tolist() == list(want), (w, h, (x0, y0, x1, y1))


def test_to_original_of_an_empty_list() -> None:
    out = Preprocessing().to_original(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    assert out.shape == (0, 4)


def test_crop_larger_than_resize_is_rejected() -> None:
    with pytest.raises(ValueError) as info:
        Preprocessing(resize=200, crop=224)
    assert "200" in str(info.value) and "224" in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"resize": 0, "crop": 0}, {"resize": 10, "crop": 0}, {"resize": -5, "crop": 1}]
)
def test_non_positive_sizes_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="positive"):
        Preprocessing(**kwargs)


@pytest.mark.parametrize("interpolation", ["linear", "NEAREST", "", "area"])
def test_bad_interpolation_is_rejected(interpolation: str) -> None:
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation=interpolation)


@pytest.mark.parametrize(
    "kwargs",
    [{"std": (0.2, 0.0, 0.2)}, {"mean": (0.5, 0.5)}, {"std": (0.1, 0.1, 0.1, 0.1)}, {"std": (1, -1, 1)}],
)
def test_bad_mean_std_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="mean and std"):
        Preprocessing(**kwargs)


def test_dict_round_trip() -> None:
    prep = Preprocessing(resize=100, crop=90, interpolation="bicubic", mean=[0, 0.5, 1], std=[1, 2, 3])
    assert prep.mean == (0.0, 0.5, 1.0) and prep.std == (1.0, 2.0, 3.0)
    data = prep.to_dict()
    assert data["resize"] == 100 and data["interpolation"] == "bicubic"
    assert Preprocessing.from_dict({**data, "mean": list(data["mean"]), "std": list(data["std"])}) == prep
