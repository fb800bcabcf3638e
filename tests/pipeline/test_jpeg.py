"""The C++ JPEG path of --decode torchvision (pipeline.jpeg.ExactJpeg) gives Pillow's pixels, size and
errors exactly; what it does not take (CMYK, truncated files, PNGs) Pillow decodes as before."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from actindex.pipeline.decode import Decoder
from actindex.pipeline.jpeg import ExactJpeg
from actindex.pipeline.preprocess import Preprocessing
from tests.conftest import natural_image

PREP = Preprocessing(resize=40, crop=32, decode="torchvision")
LAYOUTS = {
    "4:2:0": {"subsampling": 2},
    "4:2:2": {"subsampling": 1},
    "4:4:4": {"subsampling": 0},
    "progressive": {"progressive": True, "quality": 70},
    "restart markers": {"restart_marker_rows": 1},
}


def save(path, image: Image.Image, **options) -> str:
    image.save(path, "JPEG", **{"quality": 90, **options})
    return str(path)


def test_this_machine_s_two_decoders_agree():
    assert ExactJpeg.here() is not None  # else every JPEG goes through Pillow (and a warning says so)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "truncated", "png"])
def test_the_c_decoder_gives_pillow_s_pixels_or_leaves_the_file_to_pillow(tmp_path, mode):
    exact, pillow = Decoder(PREP), Decoder(PREP, exact_jpeg=False)
    assert exact.exact_jpeg is not None and pillow.exact_jpeg is None
    files = []
    for seed, (name, options) in enumerate(LAYOUTS.items()):
        image = natural_image(seed, 61 + seed, 47)
        path = tmp_path / f"{name}.jpg"
        if mode == "png":
            image.save(path.with_suffix(".png"))
            files.append(str(path.with_suffix(".png")))
        elif mode == "truncated":
            files.append(save(path, image, **options))
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 2 // 3])
        else:
            files.append(save(path, image.convert(mode), **options))
    for path in files:
        a, b = exact(path), pillow(path)
        assert (a.width, a.height, a.error) == (b.width, b.height, b.error), path
        if b.pixels is None:
            assert a.pixels is None
        else:
            np.testing.assert_array_equal(a.pixels, b.pixels)


def test_only_plain_jpegs_take_the_c_path():
    exact = ExactJpeg.here()
    out = io.BytesIO()
    natural_image(1, 30, 20).convert("CMYK").save(out, "JPEG")
    assert exact(bytearray(out.getvalue()), 1 << 30) is None  # CMYK: Pillow's conversion
    out = io.BytesIO()
    natural_image(1, 30, 20).save(out, "JPEG")
    pixels = exact(bytearray(out.getvalue()), 1 << 30)
    assert pixels.shape == (20, 30, 3)
    assert exact(bytearray(out.getvalue()), 599) is None  # over max_pixels: Pillow names the error
