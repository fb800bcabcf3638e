"""Decoder: EXIF orientation, colour modes, animations, failures as error rows, decode_batch columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actindex.pipeline.decode import Decoder, to_rgb
from actindex.pipeline.preprocess import Preprocessing

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def identity_decoder(side: int) -> Decoder:
    """A decoder that returns a side x side image's pixels unchanged (no resampling, no cropping)."""
    return Decoder(Preprocessing(resize=side, crop=side, interpolation="nearest"))


def hwc(pixels: np.ndarray) -> np.ndarray:
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[0] == 3
    return pixels.transpose(1, 2, 0)


def red_mask(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(int)
    return (rgb[..., 0] > 160) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)


# stored image 64 wide x 48 high with a red block that is not symmetric under any rotation
STORED_W, STORED_H = 64, 48
BLOCK = (slice(4, 16), slice(20, 36))  # rows 4..15, columns 20..35 of the stored pixels

# what EXIF orientation asks for, written independently with numpy (rot90 k=-1 is clockwise)
UPRIGHT = {
    1: lambda a: a,
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # "rotate 90 CW to display"
    8: lambda a: np.rot90(a, 1),  # "rotate 90 CCW to display"
}


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    stored = np.zeros((STORED_H, STORED_W, 3), dtype=np.uint8)
    stored[BLOCK] = RED
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    img.save(path, quality=98, subsampling=0, exif=exif)
    with Image.open(path) as check:
        assert check.getexif()[0x0112] == orientation
        assert check.size == (STORED_W, STORED_H)

    upright = UPRIGHT[orientation](stored)
    up_h, up_w = upright.shape[:2]
    side = min(up_w, up_h)  # 48: the resize is a no-op, only the long side is center-cropped
    top, left = (up_h - side) // 2, (up_w - side) // 2
    expected = red_mask(upright[top : top + side, left : left + side])

    decoded = Decoder(Preprocessing(resize=side, crop=side))(str(path))
    assert decoded.error is None
    assert (decoded.width, decoded.height) == (up_w, up_h)
    if orientation in (6, 8):
        assert (decoded.width, decoded.height) == (STORED_H, STORED_W)
    got = red_mask(hwc(decoded.pixels))
    assert expected.sum() == 12 * 16
    # JPEG blurs edges by a pixel at most; the block must be where the upright image has it
    assert (got & expected).sum() >= 0.9 * expected.sum()
    assert (got & ~expected).sum() <= 0.1 * expected.sum()
    ys, xs = np.nonzero(got)
    eys, exs = np.nonzero(expected)
    assert abs(ys.mean() - eys.mean()) < 1 and abs(xs.mean() - exs.mean()) < 1


def test_orientation_6_block_lands_on_the_right_edge(tmp_path: Path) -> None:
    """Spelled out by hand: stored top edge -> upright right edge after rotating 90 degrees clockwise."""
    stored = np.zeros((STORED_H, STORED_W, 3), dtype=np.uint8)
    stored[0:8, 24:40] = RED  # touching the stored top edge, columns 24..39
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "six.jpg"
    img.save(path, quality=98, subsampling=0, exif=exif)
    decoded = Decoder(Preprocessing(resize=48, crop=48))(str(path))
    # upright is 48 wide x 64 high; stored column c -> upright row c; stored row r -> upright column 47 - r;
    # the 48x48 center crop drops 8 upright rows at the top, so the block is at rows 16..31, columns 40..47
    pixels = hwc(decoded.pixels)
    assert red_mask(pixels[18:30, 42:48]).all()
    assert not red_mask(pixels[:, :36]).any()
    assert not red_mask(pixels[:14]).any() and not red_mask(pixels[34:]).any()


def test_grayscale_palette_rgba_modes(tmp_path: Path) -> None:
    decoder = identity_decoder(4)

    gray = np.array([[0, 77, 200, 255]] * 4, dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    out = hwc(decoder(str(tmp_path / "gray.png")).pixels)
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))

    pal = Image.new("P", (4, 4))
    pal.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2, 1] * 4)
    pal.save(tmp_path / "pal.png")
    with Image.open(tmp_path / "pal.png") as check:
        assert check.mode == "P"
    out = hwc(decoder(str(tmp_path / "pal.png")).pixels)
    assert out[0].tolist() == [[10, 20, 30], [200, 100, 50], [0, 255, 0], [200, 100, 50]]

    pal.info["transparency"] = 1  # palette index 1 transparent -> white
    pal.save(tmp_path / "pal_t.png", transparency=1)
    out = hwc(decoder(str(tmp_path / "pal_t.png")).pixels)
    assert out[0].tolist() == [[10, 20, 30], [255, 255, 255], [0, 255, 0], [255, 255, 255]]

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[:, 1] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 2] = (0, 0, 0, 0)  # transparent black -> white
    rgba[:, 3] = (0, 0, 0, 128)  # half-transparent black over white -> mid gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    decoded = decoder(str(tmp_path / "rgba.png"))
    assert decoded.error is None
    out = hwc(decoded.pixels).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert out[0, 2].tolist() == [255, 255, 255]
    assert np.all(np.abs(out[0, 3] - 127) <= 1)


def test_la_mode_alpha_is_composited_on_white(tmp_path: Path) -> None:
    la = np.zeros((4, 4, 2), dtype=np.uint8)
    la[:, :2] = (30, 0)
    la[:, 2:] = (30, 255)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = hwc(identity_decoder(4)(str(tmp_path / "la.png")).pixels)
    assert out[0].tolist() == [[255] * 3, [255] * 3, [30] * 3, [30] * 3]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    img.paste((255, 0, 0, 0), (0, 0, 8, 4))  # top half cyan
    img.save(tmp_path / "cmyk.jpg", quality=98)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    decoded = identity_decoder(8)(str(tmp_path / "cmyk.jpg"))
    assert decoded.error is None and (decoded.width, decoded.height) == (8, 8)
    out = hwc(decoded.pixels).astype(int)
    assert np.all(np.abs(out[6, 4] - [255, 0, 0]) <= 8)
    assert np.all(np.abs(out[1, 4] - [0, 255, 255]) <= 8)


def test_16_bit_png_is_scaled_by_65535(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I;16")
    out = hwc(identity_decoder(4)(str(tmp_path / "deep.png")).pixels)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_16_bit_png_dark_image_is_not_stretched(tmp_path: Path) -> None:
    """A dark 16-bit image stays dark: the scale is the format's range, not the image's maximum."""
    values = np.full((4, 4), 1000, dtype=np.uint16)
    values[0, 0] = 0
    Image.fromarray(values).save(tmp_path / "dark.png")
    out = hwc(identity_decoder(4)(str(tmp_path / "dark.png")).pixels)
    assert out[1, 1, 0] == round(1000 / 65535 * 255)  # 4


def test_to_rgb_of_32_bit_float_image_keeps_relative_values() -> None:
    img = Image.fromarray(np.array([[0.0, 50.0], [100.0, 200.0]], dtype=np.float32), "F")
    out = np.asarray(to_rgb(img))
    assert out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    first = Image.new("RGB", (8, 8), RED)
    second = Image.new("RGB", (8, 8), BLUE)
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2
    decoded = identity_decoder(8)(str(path))
    assert decoded.error is None
    assert (decoded.width, decoded.height) == (8, 8)
    out = hwc(decoded.pixels)
    assert np.all(out == np.array(RED, dtype=np.uint8))


def test_animated_gif_left_on_a_later_frame_still_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    Image.new("RGB", (8, 8), RED).save(path, save_all=True, append_images=[Image.new("RGB", (8, 8), BLUE)])
    with Image.open(path) as img:
        img.seek(1)
        out = np.asarray(to_rgb(img))
    assert np.all(out == np.array(RED, dtype=np.uint8))


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    decoded = identity_decoder(8)(str(tmp_path / "empty.jpg"))
    assert decoded.pixels is None
    assert decoded.error == "not an image: unrecognised format"
    assert (decoded.width, decoded.height) == (0, 0)


def test_truncated_jpeg_is_an_error_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    decoded = Decoder(Preprocessing(resize=32, crop=32))(str(tmp_path / "half.jpg"))
    assert decoded.pixels is None
    assert decoded.error.startswith("truncated")
    assert len(decoded.error) < 300
    assert (decoded.width, decoded.height) == (80, 64)  # the header was readable


def test_random_bytes_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(1).bytes(2000))
    decoded = identity_decoder(8)(str(tmp_path / "noise.jpg"))
    assert decoded.pixels is None
    assert decoded.error == "not an image: unrecognised format"


def test_missing_file(tmp_path: Path) -> None:
    decoded = identity_decoder(8)(str(tmp_path / "gone.jpg"))
    assert decoded.pixels is None
    assert decoded.error.startswith("unreadable")
    assert (decoded.width, decoded.height) == (0, 0)


def test_max_pixels(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20), RED).save(tmp_path / "big.png")
    prep = Preprocessing(resize=8, crop=8)
    decoded = Decoder(prep, max_pixels=100)(str(tmp_path / "big.png"))
    assert decoded.pixels is None
    assert decoded.error.startswith("too large")
    assert "20x20" in decoded.error
    assert (decoded.width, decoded.height) == (20, 20)
    assert Decoder(prep, max_pixels=400)(str(tmp_path / "big.png")).error is None


def test_decode_batch_columns(tmp_path: Path) -> None:
    Image.new("RGB", (10, 6), RED).save(tmp_path / "a.png")
    Image.new("RGB", (6, 10), BLUE).save(tmp_path / "c.png")
    (tmp_path / "b.jpg").write_bytes(b"not really")
    uris = np.array([str(tmp_path / n) for n in ("a.png", "b.jpg", "c.png")])
    batch = {"uri": uris, "image_id": np.array([7, 8, 9], dtype=np.int64)}
    out = Decoder(Preprocessing(resize=6, crop=4)).decode_batch(batch)

    assert np.array_equal(out["image_id"], [7, 8, 9])
    assert np.array_equal(out["uri"], uris)
    assert out["pixels"].shape == (3, 3, 4, 4) and out["pixels"].dtype == np.uint8
    assert out["ok"].dtype == bool and out["ok"].tolist() == [True, False, True]
    assert out["width"].tolist() == [10, 0, 6] and out["height"].tolist() == [6, 0, 10]
    assert out["width"].dtype == np.int32 and out["height"].dtype == np.int32
    assert out["error"].tolist() == ["", "not an image: unrecognised format", ""]
    assert np.all(out["pixels"][1] == 0)
    assert np.all(out["pixels"][0].transpose(1, 2, 0) == np.array(RED, dtype=np.uint8))
    assert np.all(out["pixels"][2].transpose(1, 2, 0) == np.array(BLUE, dtype=np.uint8))
    assert "pixels" not in batch  # the input batch is not modified


def test_decode_batch_all_failing(tmp_path: Path) -> None:
    out = Decoder(Preprocessing(resize=6, crop=4)).decode_batch({"uri": np.array([str(tmp_path / "x.jpg")])})
    assert out["pixels"].shape == (1, 3, 4, 4)
    assert out["ok"].tolist() == [False]
    assert out["error"].tolist() == ["unreadable: file not found"]


def test_max_pixels_above_pillows_limit_is_honoured(tmp_path: Path, monkeypatch) -> None:
    # Pillow's limit lowered to 2 x 150 px stands in for a >179 MP photo decoded with max_pixels=300_000_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)
    Image.new("RGB", (20, 20), RED).save(tmp_path / "big.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")  # 400 px is above Pillow's 2 x 150
    decoded = Decoder(Preprocessing(resize=8, crop=8), max_pixels=1_000)(str(tmp_path / "big.png"))
    assert decoded.error is None


# --------------------------------------------------------------------------- decode="torchvision"


def exif_jpeg(path: Path, img: Image.Image, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=90, exif=exif.tobytes())
    return path


@pytest.fixture(scope="module")
def torchvision_cases(tmp_path_factory, skimage_photos) -> list[Path]:
    """EXIF-rotated JPEGs (orientations 6 and 3, one of them large), large JPEGs the fast path drafts, and
    scikit-image's photos (RGB, grayscale and RGBA PNGs, JPEGs)."""
    from actindex.pipeline.synthetic import synthetic_photo

    folder = tmp_path_factory.mktemp("torchvision_cases")
    cases = [
        exif_jpeg(folder / "exif6.jpg", synthetic_photo(1, 500, 375), 6),
        exif_jpeg(folder / "exif3.jpg", synthetic_photo(2, 375, 500), 3),
        exif_jpeg(folder / "exif6_large.jpg", synthetic_photo(3, 2400, 1800), 6),
    ]
    for i, size in enumerate([(2400, 1800), (1600, 2600)]):
        synthetic_photo(10 + i, *size).save(folder / f"large{i}.jpg", quality=90)
        cases.append(folder / f"large{i}.jpg")
    return cases + sorted(skimage_photos.iterdir())


def torchvision_input(path: Path, prep: Preprocessing):
    """The model input of torchvision's standard pipeline: its ImageFolder loader, then weights.transforms()
    (ImageClassification) with `prep`'s sizes, interpolation, mean and std."""
    from torchvision.models import ResNet50_Weights
    from torchvision.transforms import InterpolationMode

    transforms = ResNet50_Weights.IMAGENET1K_V2.transforms(
        crop_size=prep.crop,
        resize_size=prep.resize,
        interpolation=InterpolationMode(prep.interpolation),
        mean=prep.mean,
        std=prep.std,
    )
    with open(path, "rb") as f:  # torchvision.datasets.folder.pil_loader
        return transforms(Image.open(f).convert("RGB"))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_torchvision_decode_is_torchvisions_model_input_exactly(torchvision_cases, interpolation):
    import torch

    from actindex.pipeline.recorder import ActivationRecorder

    prep = Preprocessing(256, 224, interpolation, decode="torchvision")
    normalize = ActivationRecorder(torch.nn.Conv2d(3, 1, 1), [], prep).normalize  # the job's normalization
    decoder, fast = Decoder(prep), Decoder(Preprocessing(256, 224, interpolation))
    for path in torchvision_cases:
        decoded = decoder(str(path))
        assert decoded.error is None, (path.name, decoded.error)
        expected = torchvision_input(path, prep)
        assert torch.equal(normalize(decoded.pixels[None])[0], expected), path.name
        assert (decoded.width, decoded.height) == Image.open(path).size  # the stored frame: no EXIF swap
        if path.stem.startswith(("exif", "large")):  # the cases the fast path decodes differently
            assert not np.array_equal(fast(str(path)).pixels, decoded.pixels), path.name


def test_torchvision_decode_keeps_the_stored_frame_and_the_fast_one_turns_upright(tmp_path):
    stored = np.zeros((STORED_H, STORED_W, 3), dtype=np.uint8)
    stored[BLOCK] = RED
    path = exif_jpeg(tmp_path / "rotated.jpg", Image.fromarray(stored), 6)
    exact = Decoder(Preprocessing(STORED_H, STORED_H, "nearest", decode="torchvision"))(str(path))
    fast = Decoder(Preprocessing(STORED_H, STORED_H, "nearest"))(str(path))
    assert (exact.width, exact.height, fast.width, fast.height) == (64, 48, 48, 64)
    left = (STORED_W - STORED_H) // 2  # the center crop of the stored 64x48 image
    assert np.array_equal(red_mask(hwc(exact.pixels)), red_mask(stored[:, left : left + STORED_H]))
    upright = np.rot90(stored, -1)  # 48 wide x 64 high; its center crop takes rows 8..55
    assert np.array_equal(red_mask(hwc(fast.pixels)), red_mask(upright[8:56]))


def test_torchvision_decode_drops_alpha_like_torchvision(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    exact = Decoder(Preprocessing(8, 8, "nearest", decode="torchvision"))(str(tmp_path / "clear.png"))
    fast = Decoder(Preprocessing(8, 8, "nearest"))(str(tmp_path / "clear.png"))
    assert (hwc(exact.pixels) == (200, 0, 0)).all() and (hwc(fast.pixels) == 255).all()


def test_decode_must_be_fast_or_torchvision():
    from actindex.pipeline.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="decode 'pil' is not one of fast, torchvision"):
        Preprocessing(decode="pil")
    assert (
        Preprocessing.from_dict({**Preprocessing().to_dict(), "decode": "torchvision"}).decode
        == "torchvision"
    )
    old = {k: v for k, v in Preprocessing().to_dict().items() if k != "decode"}  # an index from before
    assert Preprocessing.from_dict(old).decode == "fast"
