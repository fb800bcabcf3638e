"""Bad input gets a clear error reason, never a crash or a silent drop (tests/badinputs.py's corpus)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from actindex.pipeline import sources
from actindex.pipeline.decode import ERROR_KINDS, Decoder, describe_error, error_kind
from actindex.pipeline.listing import list_images
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.sources import display_path, image_id_for, path_from_display
from tests.badinputs import (
    BIG_SIZE,
    BIG_SQUARE,
    DIR_LOOP,
    GREY,
    NON_UTF8_NAME,
    RED,
    corrupt_scan,
    delete_listed,
    jpeg_bytes,
    make_corpus,
    save_with_orientation,
    write_big_jpeg,
)
from tests.conftest import natural_image

PREP = Preprocessing(resize=72, crop=64, interpolation="bilinear")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder, expected, refs, listing errors, {relpath: DecodedImage}): listed, then some files deleted,
    then decoded, as the job does it."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    expected = make_corpus(folder, awkward_names=True)
    listing_errors: list[tuple[str, str]] = []
    refs = list_images(str(folder), errors=listing_errors)
    delete_listed(folder, expected)
    decoder = Decoder(PREP)
    return folder, expected, refs, listing_errors, {ref.relpath: decoder(ref.uri) for ref in refs}


def test_listing_reports_every_corpus_file_once_and_nothing_else(corpus) -> None:
    folder, expected, refs, listing_errors, _ = corpus
    relpaths = [ref.relpath for ref in refs]
    assert relpaths == sorted(expected)  # sorted, no duplicates through photos/loop -> .., none missing
    assert "dir.jpg" not in relpaths and "dir.jpg/inside.png" in relpaths  # a folder named like an image
    assert listing_errors == [(DIR_LOOP, "symlink loop: leads back to a folder it is inside of; skipped")]
    for ref in refs:
        assert ref.image_id == image_id_for(ref.relpath)
        assert ref.label == expected[ref.relpath].label
        assert ref.uri == os.path.join(str(folder.resolve()), ref.relpath)


def test_every_file_gets_its_outcome_and_reason_kind(corpus) -> None:
    _, expected, _, _, decoded = corpus
    wrong = []
    for relpath, want in expected.items():
        got = decoded[relpath]
        outcome = ("ok", None) if got.error is None else ("error", error_kind(got.error))
        if outcome != (want.status, want.kind):
            wrong.append(f"{relpath!r}: expected {want.status} {want.kind or ''}, got {got.error or 'ok'}")
        elif want.detail is not None and want.detail not in got.error:
            wrong.append(f"{relpath!r}: error {got.error!r} does not say {want.detail!r}")
        if want.size is not None and (got.width, got.height) != want.size:
            wrong.append(f"{relpath!r}: size {(got.width, got.height)}, expected {want.size}")
        if (got.error is None) != (got.pixels is not None):
            wrong.append(f"{relpath!r}: pixels and error disagree")
    assert not wrong, "\n".join(wrong)
    kinds = {e.kind for e in expected.values() if e.kind}
    assert kinds == {"not an image", "truncated", "corrupt", "too large", "unreadable"}


def test_error_reasons_are_short_one_line_and_from_the_vocabulary(corpus) -> None:
    errors = [d.error for d in corpus[4].values() if d.error]
    assert len(errors) == sum(e.status == "error" for e in corpus[1].values()) >= 15
    for error in errors:
        assert error_kind(error) in ERROR_KINDS
        assert ": " in error and "\n" not in error and len(error) <= 120, error


def crop_position(prep: Preprocessing, width: int, height: int, fx: float, fy: float) -> tuple[int, int]:
    """Pixel of the decoded crop that shows the point (fx, fy) (fractions of the upright original)."""
    rw, rh = prep.resized_size(width, height)
    left, top = prep.crop_origin(rw, rh)
    return int(fx * rw - left), int(fy * rh - top)


def test_converted_colours_land_where_they_were_drawn(corpus) -> None:
    _, expected, _, _, decoded = corpus
    probed = 0
    for relpath, want in expected.items():
        for fx, fy, rgb in want.probes:
            got = decoded[relpath]
            x, y = crop_position(PREP, got.width, got.height, fx, fy)
            assert 0 <= x < PREP.crop and 0 <= y < PREP.crop, (relpath, fx, fy)
            pixel = got.pixels[:, y, x].astype(int)
            assert np.abs(pixel - rgb).max() <= 12, f"{relpath} at {(fx, fy)}: {pixel.tolist()} != {rgb}"
            probed += 1
    assert probed == sum(len(e.probes) for e in expected.values()) >= 18


def red_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) exclusive bounding box of the reddish pixels of a (3, H, W) crop."""
    r, g, b = pixels.astype(int)
    ys, xs = np.nonzero((r > 150) & (g < 90) & (b < 90))
    assert len(xs), "no red in the crop"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def red_centroid(pixels: np.ndarray) -> tuple[float, float]:
    """Redness-weighted centre (x, y) of a (3, H, W) crop, in continuous pixel coordinates."""
    r, g, b = pixels.astype(float)
    weight = np.clip(r - (g + b) / 2 - 40, 0, None)
    ys, xs = np.mgrid[0 : weight.shape[0], 0 : weight.shape[1]] + 0.5
    return (xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()


def upright_square(square, size, orientation: int):
    """Where a square drawn on the stored pixels lands upright (independent of pipeline.decode)."""
    x0, y0, x1, y1 = square
    w, h = size
    return {
        1: (x0, y0, x1, y1),
        3: (w - x1, h - y1, w - x0, h - y0),
        6: (h - y1, x0, h - y0, x1),  # rotate 90 clockwise: stored (x, y) -> (h - y, x)
        8: (y0, w - x1, y1, w - x0),  # rotate 90 counter-clockwise: stored (x, y) -> (y, w - x)
    }[orientation]


def reference_crop(path: Path, prep: Preprocessing) -> np.ndarray:
    """Full decode + resize + center crop with plain Pillow: what the decoder did before drafting."""
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    rw, rh = prep.resized_size(*upright.size)
    resized = upright.resize((rw, rh), Image.Resampling.BILINEAR)
    left, top = prep.crop_origin(rw, rh)
    return np.asarray(resized.crop((left, top, left + prep.crop, top + prep.crop))).transpose(2, 0, 1)


@pytest.fixture()
def draft_scales(monkeypatch) -> list[float]:
    """Records the scale of every JPEG draft the decoder asks for."""
    scales: list[float] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = original(self, mode, size)
        scales.append(before[0] / result[1][2] if result else 1.0)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return scales


@pytest.mark.parametrize(
    ("size", "square", "orientation"),
    [
        (BIG_SIZE, BIG_SQUARE, 1),
        ((4001, 3003), (3000, 200, 3400, 600), 6),  # odd sizes: the drafted image has a partial pixel
        ((4001, 3003), (3000, 200, 3400, 600), 8),
        ((4001, 3003), (3000, 200, 3400, 600), 3),
    ],
)
def test_large_jpeg_is_drafted_and_the_planted_square_lands_where_it_belongs(
    tmp_path, draft_scales, size, square, orientation
) -> None:
    path = tmp_path / "big.jpg"
    write_big_jpeg(path, size, square, orientation)
    prep = Preprocessing(resize=240, crop=224, interpolation="bilinear")
    decoded = Decoder(prep)(str(path))
    assert decoded.error is None
    upright_size = size[::-1] if orientation in (6, 8) else size
    assert (decoded.width, decoded.height) == upright_size  # the original's, not the drafted image's
    assert draft_scales and draft_scales[-1] >= 4  # decoded at 1/4 or 1/8 scale

    # the square, mapped by hand from original pixels to the crop, is found within a pixel
    ux0, uy0, ux1, uy1 = upright_square(square, size, orientation)
    rw, rh = prep.resized_size(*upright_size)
    left, top = prep.crop_origin(rw, rh)
    sx, sy = rw / upright_size[0], rh / upright_size[1]
    want = (ux0 * sx - left, uy0 * sy - top, ux1 * sx - left, uy1 * sy - top)
    got = red_box(decoded.pixels)
    assert np.abs(np.subtract(got, want)).max() <= 1, (got, want)
    centre = ((want[0] + want[2]) / 2, (want[1] + want[3]) / 2)
    assert np.abs(np.subtract(red_centroid(decoded.pixels), centre)).max() < 0.1  # sub-pixel
    # and the index's own inverse geometry maps the found box back onto the planted square
    back = prep.to_original(np.array([got]), np.array([upright_size[0]]), np.array([upright_size[1]]))[0]
    assert np.abs(back - (ux0, uy0, ux1, uy1)).max() <= 1 / sx + 1, (back, (ux0, uy0, ux1, uy1))

    # the drafted result is close to decoding every pixel
    reference = reference_crop(path, prep).astype(int)
    assert np.abs(decoded.pixels.astype(int) - reference).mean() < 1.0
    assert red_box(reference.astype(np.uint8)) == got


def test_normal_size_jpeg_is_not_drafted_and_equals_a_full_decode(tmp_path, draft_scales) -> None:
    path = tmp_path / "photo.jpg"
    natural_image(5, 640, 480).save(path, quality=92)  # 2.6x the resize (192x144 -> 256x192 ... ) at most
    prep = Preprocessing(resize=192, crop=160, interpolation="bilinear")
    decoded = Decoder(prep)(str(path))
    assert decoded.error is None and (decoded.width, decoded.height) == (640, 480)
    assert all(scale == 1 for scale in draft_scales)
    assert np.array_equal(decoded.pixels, reference_crop(path, prep))


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_is_decoded_upright(tmp_path, orientation) -> None:
    stored = np.full((48, 64, 3), GREY, dtype=np.uint8)
    stored[0:12, 0:16] = RED  # the stored top-left corner
    path = tmp_path / f"rotated{orientation}.jpg"
    save_with_orientation(stored, path, orientation)
    decoded = Decoder(Preprocessing(resize=48, crop=48, interpolation="nearest"))(str(path))
    assert decoded.error is None and (decoded.width, decoded.height) == (48, 64)
    # upright 48 wide x 64 high, the center crop drops 8 rows at the top and bottom: orientation 6 puts the
    # block top-right (columns 36..47, rows 0..15 -> crop rows 0..7), orientation 8 bottom-left (columns
    # 0..11, rows 48..63 -> crop rows 40..47)
    want = (36, 0, 48, 8) if orientation == 6 else (0, 40, 12, 48)
    assert np.abs(np.subtract(red_box(decoded.pixels), want)).max() <= 1


def test_corrupt_scan_data_decodes_ok_with_garbled_pixels_below_the_damage(tmp_path) -> None:
    """The documented limit: libjpeg only warns, Pillow drops the warning, so the file is indexed ok."""
    clean = jpeg_bytes(natural_image(20, 160, 120))
    (tmp_path / "clean.jpg").write_bytes(clean)
    (tmp_path / "bad.jpg").write_bytes(corrupt_scan(clean))
    decoder = Decoder(Preprocessing(resize=120, crop=120, interpolation="nearest"))
    good, bad = decoder(str(tmp_path / "clean.jpg")), decoder(str(tmp_path / "bad.jpg"))
    assert bad.error is None and (bad.width, bad.height) == (160, 120)
    rows_equal = (good.pixels == bad.pixels).all(axis=(0, 2))
    assert rows_equal[:16].all()  # above the damage: identical
    assert not rows_equal[-16:].all()  # below it: different pixels, yet no error


def test_file_deleted_between_listing_and_reading(tmp_path) -> None:
    natural_image(1, 32, 32).save(tmp_path / "a.png")
    natural_image(2, 32, 32).save(tmp_path / "b.png")
    refs = list_images(str(tmp_path))
    (tmp_path / "b.png").unlink()
    out = Decoder(PREP).decode_batch({"uri": np.array([r.uri for r in refs], dtype=object)})
    assert out["ok"].tolist() == [True, False]
    assert out["error"].tolist() == ["", "unreadable: file not found"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_file_without_read_permission(tmp_path) -> None:
    natural_image(1, 32, 32).save(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    assert Decoder(PREP)(str(tmp_path / "locked.png")).error == "unreadable: permission denied"


def test_directory_named_like_an_image(tmp_path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    natural_image(1, 32, 32).save(tmp_path / "real.png")
    assert [r.relpath for r in list_images(str(tmp_path))] == ["real.png"]  # folder walked, not listed
    (tmp_path / "files.txt").write_text("dir.jpg\nreal.png\n")  # a list file can still name it
    refs = list_images(str(tmp_path / "files.txt"))
    errors = [Decoder(PREP)(r.uri).error for r in refs]
    assert errors == ["unreadable: is a directory", None]


def test_glob_lists_dangling_and_looping_symlinks_once_and_survives_a_folder_loop(corpus) -> None:
    folder, expected, *_ = corpus
    listing_errors: list[tuple[str, str]] = []
    refs = list_images(str(folder) + "/**/*.jpg", errors=listing_errors)
    want = sorted(r for r, e in expected.items() if r.endswith(".jpg") and not e.delete_after_listing)
    assert [r.relpath for r in refs] == want
    assert {"bad/dangling.jpg", "bad/loop_a.jpg", "bad/loop_b.jpg", "bad/fifo.jpg"} <= set(want)
    assert [e[0] for e in listing_errors] == [DIR_LOOP]
    refs = list_images(str(folder) + "/bad/loop_?.jpg")
    assert [r.relpath for r in refs] == ["loop_a.jpg", "loop_b.jpg"]


def test_folder_symlinks_are_followed_once_but_not_round_a_loop(tmp_path) -> None:
    natural_image(1, 32, 32).save(tmp_path / "top.png")
    (tmp_path / "real").mkdir()
    natural_image(2, 32, 32).save(tmp_path / "real" / "x.png")
    os.symlink(tmp_path / "real", tmp_path / "alias")  # a folder symlink: followed, as ImageFolder does
    os.symlink("..", tmp_path / "real" / "up")  # loops back through real/ to tmp_path
    listing_errors: list[tuple[str, str]] = []
    refs = list_images(str(tmp_path), errors=listing_errors)
    assert [r.relpath for r in refs] == ["alias/x.png", "real/x.png", "top.png"]
    assert [e[0] for e in listing_errors] == ["alias/up", "real/up"]
    assert [r.relpath for r in list_images(str(tmp_path))] == ["alias/x.png", "real/x.png", "top.png"]


def test_unreadable_subfolder_is_reported_or_raises(tmp_path, monkeypatch) -> None:
    for name in ("a/1.png", "locked/2.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        natural_image(1, 16, 16).save(tmp_path / name)
    real_scandir = os.scandir

    def scandir(path):  # root cannot be denied anything: fake the refusal
        if os.path.basename(path) == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    listing_errors: list[tuple[str, str]] = []
    refs = list_images(str(tmp_path), errors=listing_errors)
    assert [r.relpath for r in refs] == ["a/1.png"]
    assert listing_errors == [("locked", "unreadable: permission denied")]
    with pytest.raises(PermissionError, match="locked"):
        list_images(str(tmp_path))  # never a silent drop: without `errors` the listing refuses


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists folders whatever their permissions")
def test_unreadable_subfolder_for_real(tmp_path) -> None:
    (tmp_path / "locked").mkdir()
    natural_image(1, 16, 16).save(tmp_path / "ok.png")
    (tmp_path / "locked").chmod(0)
    try:
        listing_errors: list[tuple[str, str]] = []
        assert [r.relpath for r in list_images(str(tmp_path), errors=listing_errors)] == ["ok.png"]
        assert listing_errors == [("locked", "unreadable: permission denied")]
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_non_utf8_name_is_listed_decoded_and_stored_reversibly(corpus) -> None:
    folder, _, refs, _, decoded = corpus
    (ref,) = [r for r in refs if r.relpath.startswith("awkward/caf")]
    assert ref.relpath == "awkward/caf\udce9.png"  # surrogate escape, as os.fsdecode gives it
    assert os.fsencode(ref.uri).endswith(b"/awkward/" + NON_UTF8_NAME)
    digest = hashlib.blake2b(b"awkward/" + NON_UTF8_NAME, digest_size=8).digest()
    assert ref.image_id == int.from_bytes(digest, "big") & (2**63 - 1)  # the real bytes are hashed
    assert decoded[ref.relpath].error is None

    with pytest.raises(UnicodeEncodeError):
        pa.array([ref.uri])  # why display_path exists
    stored = display_path(ref.uri)
    assert stored.endswith("/awkward/caf%E9.png")
    assert pa.array([stored]).to_pylist() == [stored]
    assert path_from_display(stored) == ref.uri
    assert Decoder(PREP)(path_from_display(stored)).error is None


@pytest.mark.parametrize(
    ("path", "stored"),
    [
        ("/d/photos/été 2024/chat noir.png", "/d/photos/été 2024/chat noir.png"),  # unchanged
        ("/d/100% cotton.png", "/d/100%25 cotton.png"),
        ("/d/100%25.png", "/d/100%2525.png"),
        ("/d/caf\udce9 %.png", "/d/caf%E9 %25.png"),
        ("/d/\udcff\udcfe/x.jpg", "/d/%FF%FE/x.jpg"),
    ],
)
def test_display_path_round_trip(path: str, stored: str) -> None:
    assert display_path(path) == stored
    assert path_from_display(stored) == path
    stored.encode("utf-8")  # valid UTF-8 text


def test_space_and_unicode_path_is_indexed(corpus) -> None:
    folder, _, refs, _, decoded = corpus
    (ref,) = [r for r in refs if r.relpath == "photos/été 2024/chat noir.png"]
    assert ref.label == "photos" and decoded[ref.relpath].error is None
    assert display_path(ref.uri) == ref.uri


def test_max_pixels_is_checked_from_the_header(tmp_path) -> None:
    natural_image(1, 60, 50).save(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    natural_image(1, 60, 50).save(tmp_path / "rotated.jpg", exif=exif)
    assert Decoder(PREP, max_pixels=3000)(str(tmp_path / "a.png")).error is None
    small = Decoder(PREP, max_pixels=2999)
    assert small(str(tmp_path / "a.png")).error == "too large: 60x50 exceeds 2999 pixels"
    rotated = small(str(tmp_path / "rotated.jpg"))
    assert rotated.error == "too large: 50x60 exceeds 2999 pixels"  # upright, from the EXIF header
    assert (rotated.width, rotated.height) == (50, 60)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OSError("image file is truncated (3 bytes not processed)"), "truncated: image file is truncated"),
        (EOFError(), "truncated: EOFError"),
        (SyntaxError("broken PNG file"), "corrupt: broken PNG file"),
        (zlib.error("Error -3 while decompressing data"), "corrupt: Error -3"),
        (ValueError("Decompressed Data Too Large"), "too large: Decompressed Data Too Large"),
        (OSError(errno.EIO, "Input/output error"), "unreadable: input/output error"),
        (OSError("decoder jpeg2k not available"), "unsupported: decoder jpeg2k not available"),
        (ValueError("conversion from LAB to RGB not supported"), "unsupported: conversion from LAB"),
        (KeyError("x"), "failed: KeyError: 'x'"),
    ],
)
def test_describe_error_vocabulary(exc: Exception, reason: str) -> None:
    described = describe_error(exc)
    assert described.startswith(reason), described
    assert error_kind(described) in ERROR_KINDS


def test_bomb_header_is_not_decoded_even_when_pillow_would_decode_to_find_exif(tmp_path) -> None:
    """Pillow decodes a PNG to look for EXIF after its pixels: the size check must come first."""
    from tests.badinputs import png_header_only

    (tmp_path / "bomb.png").write_bytes(png_header_only(30000, 30000))
    decoded = Decoder(PREP)(str(tmp_path / "bomb.png"))
    assert decoded.error == "too large: 30000x30000 exceeds 178956970 pixels"
    assert (decoded.width, decoded.height) == (30000, 30000)
    with Image.open(io.BytesIO(png_header_only(30, 30))) as img, pytest.raises(OSError, match="truncated"):
        img.load()  # the same tiny IDAT at a size that passes: decoding is what fails
