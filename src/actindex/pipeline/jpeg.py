"""JPEG headers read without decoding, and a CPU decode that gives Pillow's pixels in one C++ call.

    header = parse_jpeg_header(data)        # JpegHeader: size, components, precision, SOF, EXIF orientation
    exact = ExactJpeg.here()                # None where torchvision's libjpeg and Pillow's disagree
    pixels = exact(data, max_pixels)        # (H, W, 3) uint8 = Image.open(f).convert("RGB"), or None

Why ExactJpeg: Pillow walks a JPEG's markers and feeds its decoder from Python (JpegImagePlugin,
ImageFile.load), so decode threads queue for the GIL between their C calls; `torchvision.io.decode_jpeg`
decodes the whole file in one C++ call that releases it (docs/performance.md has the measurement). Both are
libjpeg-turbo with the same settings (islow IDCT, fancy upsampling, EXIF ignored), so they give the same
pixels: checked once per process on JPEGs of every common layout (`ExactJpeg.here`; where they differ, Pillow
decodes everything, and a warning says so), and used only for what both read alike: 8-bit baseline,
extended or progressive Huffman JPEGs, grayscale or 3-component, ending in their EOI marker, within
`max_pixels`. Anything else (CMYK, 12-bit, lossless, arithmetic coding, truncated, a file torchvision
rejects) gives None: Pillow decodes it, and names what is wrong with it. This is the CPU path of
`--decode torchvision` (pipeline.decode); the fast mode's EXIF and draft handling stay Pillow's.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("actindex")
EXACT_SOF = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive Huffman: 8-bit DCT JPEGs
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every start-of-frame (not DHT/JPG/DAC)
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')


@dataclass(frozen=True)
class JpegHeader:
    """What the fast path needs from a JPEG's header, read without decoding anything."""

    width: int  # stored width (before EXIF orientation)
    height: int  # stored height
    components: int  # 1 grayscale, 3 YCbCr/RGB, 4 CMYK/YCCK
    precision: int  # bits per sample
    sof: int  # start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...)
    orientation: int  # EXIF orientation 1..8 (1 when absent or unusable, as Pillow's exif_transpose)
    complete: bool  # an end-of-image marker follows the first scan

    def upright_size(self) -> tuple[int, int]:
        swap = self.orientation in (5, 6, 7, 8)
        return (self.height, self.width) if swap else (self.width, self.height)


def parse_jpeg_header(data: bytes | memoryview) -> JpegHeader | None:
    """Read a JPEG's frame header and EXIF orientation; None for anything unusual (the CPU decoder then
    decodes it, or names what is wrong with it)."""
    data = bytes(data) if isinstance(data, memoryview) else data
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    n, pos = len(data), 2
    exif_orientation: int | None = None
    exif_segments = 0
    xmp: bytes | None = None
    frame: tuple[int, int, int, int, int] | None = None
    try:
        while pos < n:
            if data[pos] != 0xFF:
                return None  # garbage between segments: libjpeg would skip it with a warning
            while pos < n and data[pos] == 0xFF:  # fill bytes
                pos += 1
            if pos >= n:
                return None
            marker = data[pos]
            pos += 1
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:
                continue  # standalone markers
            if marker in (0xD8, 0xD9):
                return None  # a second SOI, or EOI before any scan
            (length,) = struct.unpack_from(">H", data, pos)
            end = pos + length
            if length < 2 or end > n:
                return None
            body = pos + 2
            if marker == 0xE1 and data.startswith(b"Exif\x00\x00", body):
                exif_segments += 1
                if exif_segments > 1:
                    return None  # Pillow concatenates them; leave that to it
                exif_orientation = _exif_orientation(data[body + 6 : end])
                if exif_orientation == -1:
                    return None
            elif marker == 0xE1 and data.startswith(_XMP_PREFIX, body):
                xmp = data[body + len(_XMP_PREFIX) : end]  # the last one wins, as in Pillow
            elif marker in _SOF_MARKERS:
                if frame is not None or length < 8:
                    return None
                precision, height, width, components = struct.unpack_from(">BHHB", data, body)
                frame = (marker, precision, height, width, components)
            elif marker == 0xDA:  # start of scan: the header is over
                if frame is None:
                    return None
                sof, precision, height, width, components = frame
                orientation = exif_orientation
                if orientation is None and xmp is not None:
                    match = _XMP_ORIENTATION.search(xmp)
                    orientation = int(match[2]) if match else None
                if orientation is None or not 1 <= orientation <= 8:
                    orientation = 1
                # EOI normally ends the file: look at the tail first (a full scan costs ~1 us per KB)
                eoi = data.rfind(b"\xff\xd9", max(end, n - 64))
                complete = eoi != -1 or data.find(b"\xff\xd9", end) != -1
                return JpegHeader(width, height, components, precision, sof, orientation, complete)
            pos = end
    except (struct.error, IndexError):
        return None
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block: None if absent, -1 if unreadable."""
    if tiff[:4] == b"II*\x00":
        order = "<"
    elif tiff[:4] == b"MM\x00*":
        order = ">"
    else:
        return -1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind, num = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
            if tag != 0x0112:
                continue
            if num != 1 or kind not in (3, 4):  # SHORT or LONG, one value, as every camera writes it
                return -1
            fmt = "H" if kind == 3 else "I"
            return struct.unpack_from(order + fmt, tiff, ifd + 2 + 12 * i + 8)[0]
    except struct.error:
        return -1
    return None


class ExactJpeg:
    """A stage: JPEG bytes -> (H, W, 3) uint8, the pixels of Image.open(...).convert("RGB"), from
    torchvision's CPU decoder; None for a JPEG it does not take (see the module docstring)."""

    def __init__(self):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        # torchvision 0.29 deprecates its image I/O for TorchCodec (whose decoder gives other pixels)
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)

        self._torch, self._decode, self._rgb = torch, decode_jpeg, ImageReadMode.RGB

    @staticmethod
    @functools.cache
    def here() -> ExactJpeg | None:
        """The decoder, where its pixels equal Pillow's on every probe JPEG (once per process); else None,
        with a warning."""
        decoder = ExactJpeg()
        differ = [name for name, data in _probes() if not decoder.agrees(data)]
        if not differ:
            return decoder
        log.warning(
            "torchvision's JPEG decoder gives other pixels than Pillow's here (%s): JPEGs are decoded by "
            "Pillow, more slowly; install the torchvision and Pillow wheels of the same libjpeg-turbo",
            ", ".join(differ),
        )
        return None

    def __call__(self, data: bytearray, max_pixels: int) -> np.ndarray | None:
        header = parse_jpeg_header(data)
        if header is None or not header.complete or header.sof not in EXACT_SOF or header.precision != 8:
            return None
        if header.components not in (1, 3) or not 0 < header.width * header.height <= max_pixels:
            return None
        try:
            image = self._decode(self._torch.frombuffer(data, dtype=self._torch.uint8), mode=self._rgb)
        except RuntimeError:
            return None
        if image.dim() != 3 or image.shape[0] != 3:
            return None
        return image.permute(1, 2, 0).numpy()  # (H, W, 3): the decoder's own row-major buffer

    def agrees(self, data: bytes) -> bool:
        from PIL import Image

        pixels = self(bytearray(data), 1 << 30)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return pixels is not None and pixels.shape == expected.shape and bool((pixels == expected).all())


def _probes() -> list[tuple[str, bytes]]:
    """Small JPEGs of the common layouts (odd sizes, so chroma upsampling meets the edges)."""
    from PIL import Image

    rng = np.random.default_rng(21)
    field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((61, 47), Image.Resampling.BICUBIC)
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (47, 61, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    layouts = {
        "4:2:0": {"subsampling": 2},
        "4:2:2": {"subsampling": 1},
        "4:4:4": {"subsampling": 0},
        "progressive": {"progressive": True},
        "restart markers": {"restart_marker_rows": 1},
        "grayscale": {"grayscale": True},
    }
    probes = []
    for name, options in layouts.items():
        source = image.convert("L") if options.pop("grayscale", False) else image
        out = io.BytesIO()
        source.save(out, "JPEG", quality=85, **options)
        probes.append((name, out.getvalue()))
    return probes
