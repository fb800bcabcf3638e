"""A corpus of bad (and awkward but good) inputs mixed into a folder of good images, built in code.

    expected = make_corpus(folder)                  # {relpath as list_images reports it: Expected}
    refs = list_images(str(folder))
    delete_listed(folder, expected)                 # the files that vanish between listing and reading
    # decode every ref: ok / error and the error's kind (text before the first ':') must match `expected`

Kinds of error are pipeline.decode.ERROR_KINDS. What is in the corpus and what each must give:

  good/natural_*.jpg|png, photos/été 2024/chat noir.png, dir.jpg/inside.png     ok
  modes/rgba.png (transparent -> white), palette.png, palette_transparent.png,
  gray16.png (65535 -> 255), cmyk.jpg, animated.gif (first frame), one_pixel.png  ok, RGB as probed
  modes/exif_rotated.jpg (orientation 6: must be indexed upright)                ok, 80x96
  modes/big_8000x6000.jpg (red square planted; JPEG draft path)                  ok, 8000x6000
  odd/corrupt_scan_bytes.jpg (entropy-coded bytes overwritten)                   ok (garbled; see decode.py)
  bad/empty.jpg, random_bytes.jpg, text.png                                      not an image
  bad/truncated.jpg (first half), truncated.png, header_only.jpg (24 bytes)      truncated
  bad/broken_header.jpg (JPEG signature, then noise), corrupt_marker.jpg (a
  marker in the middle of the scan), corrupt_zlib.png (a broken IDAT)            corrupt
  bad/bomb.png (IHDR claims 20000x20000 > DEFAULT_MAX_PIXELS)                     too large
  bad/deleted.jpg (deleted after listing: see delete_listed), dangling.jpg (symlink
  to nothing), loop_a.jpg <-> loop_b.jpg (symlink loop), fifo.jpg (a FIFO)       unreadable
  bad/no_permission.jpg (mode 000)                 unreadable, or ok when the process can still read it (root)
  awkward/caf\\xe9.png (non-UTF-8 name), awkward/100% cotton.png   ok (only with awkward_names=True)

Not listed at all: the folder `dir.jpg` itself (a folder, walked into) and `photos/loop -> ..` (a folder
symlink loop, skipped; its files are not listed twice).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import natural_image

GREY = (128, 128, 128)
RED = (230, 20, 20)
WHITE = (255, 255, 255)
BIG_SIZE = (8000, 6000)
BIG_SQUARE = (4000, 1000, 4800, 1800)  # red square in the 8000x6000 JPEG: x0, y0, x1, y1 (exclusive)
BOMB_SIZE = (20000, 20000)  # 4e8 pixels: above DEFAULT_MAX_PIXELS (178,956,970)
NON_UTF8_NAME = b"caf\xe9.png"  # Latin-1 'café.png': not valid UTF-8
DIR_LOOP = "photos/loop"  # -> .. : a folder symlink back to the corpus root


@dataclass(frozen=True)
class Expected:
    status: str  # "ok" or "error"
    kind: str | None = None  # error kind (pipeline.decode.ERROR_KINDS) when status is "error"
    detail: str | None = None  # text the error must contain, where it is fixed
    size: tuple[int, int] | None = None  # upright (width, height) the decoder must report; None: not checked
    # (x, y) as fractions of the upright original -> RGB expected there (+- 12 per channel)
    probes: tuple[tuple[float, float, tuple[int, int, int]], ...] = ()
    delete_after_listing: bool = False  # delete_listed() removes it after list_images, before decoding
    label: str | None = field(default=None, compare=False)  # the ImageFolder label list_images gives


def make_corpus(folder: Path, awkward_names: bool = False) -> dict[str, Expected]:
    """Write the corpus into `folder`; returns what each listed relpath must decode to.

    awkward_names adds a non-UTF-8 file name and a name with '%' (good images both): they break code that
    stores paths as Parquet text without pipeline.sources.display_path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Expected] = {}

    def put(relpath: str, expected: Expected, data: bytes | None = None) -> Path:
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        label = relpath.split("/", 1)[0] if "/" in relpath else None
        out[relpath] = replace(expected, label=label)
        return path

    def ok(size=None, probes=()) -> Expected:
        return Expected("ok", size=size, probes=tuple(probes))

    def error(kind: str, detail: str | None = None, size=None) -> Expected:
        return Expected("error", kind, detail, size)

    # -- good images ------------------------------------------------------------------------------------
    natural = {
        "good/natural_0.jpg": (120, 90),
        "good/natural_1.png": (90, 120),
        "good/natural_2.jpg": (100, 100),
        "good/natural_3.png": (80, 80),
    }
    for i, (relpath, size) in enumerate(natural.items()):
        put(relpath, ok(size))
        natural_image(i, *size).save(folder / relpath, quality=92)
    put("photos/été 2024/chat noir.png", ok((96, 72)))
    natural_image(10, 96, 72).save(folder / "photos/été 2024/chat noir.png")
    put("dir.jpg/inside.png", ok((64, 64)))  # a folder named like an image is a folder
    natural_image(11, 64, 64).save(folder / "dir.jpg/inside.png")

    # -- colour modes, frames, orientation, sizes: ok, with the RGB they must become -----------------------
    rgba = np.zeros((96, 96, 4), dtype=np.uint8)
    rgba[:, :48] = (255, 0, 0, 0)  # fully transparent red: composited on white
    rgba[:, 48:] = (0, 0, 255, 255)  # opaque blue
    put("modes/rgba.png", ok((96, 96), [(0.2, 0.5, WHITE), (0.8, 0.5, (0, 0, 255))]))
    Image.fromarray(rgba, "RGBA").save(folder / "modes/rgba.png")

    palette = Image.new("P", (96, 96))
    palette.putpalette([200, 100, 50, 10, 20, 30, 0, 255, 0] + [0] * (253 * 3))
    palette.paste(0, (0, 0, 48, 96))
    palette.paste(2, (48, 0, 96, 96))
    put("modes/palette.png", ok((96, 96), [(0.2, 0.5, (200, 100, 50)), (0.8, 0.5, (0, 255, 0))]))
    palette.save(folder / "modes/palette.png")
    put("modes/palette_transparent.png", ok((96, 96), [(0.2, 0.5, WHITE), (0.8, 0.5, (0, 255, 0))]))
    palette.save(folder / "modes/palette_transparent.png", transparency=0)

    deep = np.full((96, 96), 65535, dtype=np.uint16)
    deep[:, 48:] = 32896  # 128 * 257
    put("modes/gray16.png", ok((96, 96), [(0.2, 0.5, (255, 255, 255)), (0.8, 0.5, (128, 128, 128))]))
    Image.fromarray(deep).save(folder / "modes/gray16.png")

    cmyk = Image.new("CMYK", (96, 96), (0, 255, 255, 0))  # red
    cmyk.paste((255, 0, 0, 0), (48, 0, 96, 96))  # cyan
    put("modes/cmyk.jpg", ok((96, 96), [(0.2, 0.5, (255, 0, 0)), (0.8, 0.5, (0, 255, 255))]))
    cmyk.save(folder / "modes/cmyk.jpg", quality=95)

    put("modes/animated.gif", ok((96, 96), [(0.5, 0.5, (255, 0, 0))]))
    Image.new("RGB", (96, 96), (255, 0, 0)).save(
        folder / "modes/animated.gif",
        save_all=True,
        append_images=[Image.new("RGB", (96, 96), (0, 0, 255))],
        duration=100,
        loop=0,
    )

    put("modes/one_pixel.png", ok((1, 1), [(0.5, 0.5, (10, 200, 30))]))
    Image.new("RGB", (1, 1), (10, 200, 30)).save(folder / "modes/one_pixel.png")

    # stored 96 wide x 80 high, red block in the stored top-left corner, orientation 6 (rotate 90 degrees
    # clockwise to display): upright it is 80 wide x 96 high with the block in the top-right corner
    stored = np.full((80, 96, 3), GREY, dtype=np.uint8)
    stored[0:30, 0:40] = RED
    put(
        "modes/exif_rotated.jpg",
        ok((80, 96), [(65 / 80, 20 / 96, RED), (15 / 80, 20 / 96, GREY), (65 / 80, 80 / 96, GREY)]),
    )
    save_with_orientation(stored, folder / "modes/exif_rotated.jpg", 6)

    x0, y0, x1, y1 = BIG_SQUARE
    centre = ((x0 + x1) / 2 / BIG_SIZE[0], (y0 + y1) / 2 / BIG_SIZE[1])
    put("modes/big_8000x6000.jpg", ok(BIG_SIZE, [(*centre, RED), (0.3, 0.5, GREY), (0.7, 0.7, GREY)]))
    write_big_jpeg(folder / "modes/big_8000x6000.jpg")

    put("odd/corrupt_scan_bytes.jpg", ok((160, 120)), corrupt_scan(jpeg_bytes(natural_image(20, 160, 120))))

    # -- not an image ---------------------------------------------------------------------------------------
    put("bad/empty.jpg", error("not an image", "unrecognised format"), b"")
    noise = np.random.default_rng(3).bytes(4096)
    assert not noise.startswith((b"\xff\xd8", b"\x89PNG", b"GIF8", b"II*", b"MM\x00", b"RIFF"))
    put("bad/random_bytes.jpg", error("not an image", "unrecognised format"), noise)
    put("bad/text.png", error("not an image", "unrecognised format"), b"a text file, not a PNG\n")

    # -- truncated, corrupt, too large ---------------------------------------------------------------------
    real_jpeg = jpeg_bytes(natural_image(21, 160, 120))
    put("bad/truncated.jpg", error("truncated", size=(160, 120)), real_jpeg[: len(real_jpeg) // 2])
    buffer = io.BytesIO()
    natural_image(22, 160, 120).save(buffer, "PNG")
    real_png = buffer.getvalue()
    put("bad/truncated.png", error("truncated", size=(160, 120)), real_png[: len(real_png) // 2])
    put("bad/header_only.jpg", error("truncated"), real_jpeg[:24])
    broken_header = real_jpeg[:3] + np.random.default_rng(4).bytes(1000)
    put("bad/broken_header.jpg", error("corrupt", "JPEG signature but no readable header"), broken_header)
    put("bad/corrupt_marker.jpg", error("corrupt", size=(160, 120)), stray_marker(real_jpeg))
    put("bad/corrupt_zlib.png", error("corrupt", size=(160, 120)), broken_idat(real_png))
    put("bad/bomb.png", error("too large", "20000x20000", size=BOMB_SIZE), png_header_only(*BOMB_SIZE))

    # -- unreadable ---------------------------------------------------------------------------------------
    put("bad/deleted.jpg", Expected("error", "unreadable", "file not found", delete_after_listing=True))
    natural_image(23, 64, 64).save(folder / "bad/deleted.jpg")
    put("bad/dangling.jpg", error("unreadable", "file not found"))
    os.symlink("missing.jpg", folder / "bad/dangling.jpg")
    put("bad/loop_a.jpg", error("unreadable", "symlink loop"))
    put("bad/loop_b.jpg", error("unreadable", "symlink loop"))
    os.symlink("loop_b.jpg", folder / "bad/loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "bad/loop_b.jpg")
    put("bad/fifo.jpg", error("unreadable", "not a regular file"))
    os.mkfifo(folder / "bad/fifo.jpg")
    locked = folder / "bad/no_permission.jpg"
    natural_image(24, 64, 64).save(locked)
    locked.chmod(0)
    readable = os.access(locked, os.R_OK)  # root reads it anyway
    put("bad/no_permission.jpg", ok((64, 64)) if readable else error("unreadable", "permission denied"))

    # a folder symlink loop: listing must neither recurse forever nor list anything twice
    os.symlink("..", folder / DIR_LOOP)

    if awkward_names:
        raw = os.fsencode(folder / "awkward") + b"/" + NON_UTF8_NAME
        os.makedirs(folder / "awkward", exist_ok=True)
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(png_bytes(natural_image(30, 72, 72)))
        put("awkward/" + os.fsdecode(NON_UTF8_NAME), ok((72, 72)))
        put("awkward/100% cotton.png", ok((72, 72)), png_bytes(natural_image(31, 72, 72)))
    return out


def delete_listed(folder: Path, expected: dict[str, Expected]) -> list[str]:
    """Delete the corpus files meant to vanish between listing and reading; returns their relpaths."""
    gone = [relpath for relpath, e in expected.items() if e.delete_after_listing]
    for relpath in gone:
        (folder / relpath).unlink()
    return gone


# -- builders ---------------------------------------------------------------------------------------------


def jpeg_bytes(img: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def save_with_orientation(pixels: np.ndarray, path: Path, orientation: int) -> None:
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, quality=95, subsampling=0, exif=exif)


def write_big_jpeg(path: Path, size: tuple[int, int] = BIG_SIZE, square=BIG_SQUARE, orientation: int = 1):
    """A large grey JPEG with a red square (stored pixels; EXIF orientation applied by readers)."""
    img = Image.new("RGB", size, GREY)
    img.paste(RED, square)
    exif = img.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(path, quality=90, exif=exif)


def _scan_range(jpeg: bytes) -> tuple[int, int]:
    """(start, end) of the entropy-coded data of a baseline JPEG's single scan."""
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", jpeg[sos + 2 : sos + 4])[0]
    return start, jpeg.rindex(b"\xff\xd9")


def corrupt_scan(jpeg: bytes, length: int = 48) -> bytes:
    """Overwrite `length` bytes in the middle of the scan with noise that contains no 0xFF (no markers)."""
    start, end = _scan_range(jpeg)
    at = (start + end) // 2
    while jpeg[at - 1] == 0xFF:  # do not turn a stuffed 0xFF 0x00 into a marker
        at += 1
    noise = bytes(b % 0xFF for b in np.random.default_rng(5).bytes(length))
    return jpeg[:at] + noise + jpeg[at + length :]


def stray_marker(jpeg: bytes) -> bytes:
    """Insert a DHT marker in the middle of the scan: libjpeg stops with an error."""
    start, end = _scan_range(jpeg)
    at = (start + end) // 2
    while jpeg[at - 1] == 0xFF:
        at += 1
    return jpeg[:at] + b"\xff\xc4" + jpeg[at:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def broken_idat(png: bytes) -> bytes:
    """Flip bytes inside the first IDAT's zlib stream and fix the chunk's CRC: the inflate fails."""
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4 : at])[0]
    data = bytearray(png[at + 4 : at + 4 + length])
    for i in range(8, 16):
        data[i] ^= 0xFF
    return png[: at - 4] + _png_chunk(b"IDAT", bytes(data)) + png[at + 8 + length :]


def png_header_only(width: int, height: int) -> bytes:
    """A decompression bomb's header: a valid PNG claiming width x height RGB, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )
