"""Decode image files into model-ready uint8 pixels, recording failures instead of raising.

    decoder = Decoder(Preprocessing(resize=256, crop=224))
    image = decoder("photos/cat.jpg")   # DecodedImage(pixels=(3, 224, 224) uint8, width, height, error)
    batch = decoder.decode_batch({"uri": np.array(["a.jpg", "b.png"])})

Two ways to turn a file into RGB pixels (`Preprocessing.decode`); the resize and center crop that follow
are torchvision's `Resize(resize, interpolation, antialias=True)` + `CenterCrop(crop)` on a PIL image in both.

  fast         (the default) EXIF orientation is applied, the first frame of animations is used, and
               grayscale, palette, CMYK, 16-bit and alpha images become RGB (transparent pixels are composited
               on white). `width`/`height` are those of the upright original, the frame that boxes are
               expressed in. A JPEG at least four times larger than the resize needs is decoded at 1/2, 1/4
               or 1/8 scale in the DCT (Pillow's `draft`), keeping at least twice the resized size, so the
               final resize still averages >= 2x2 decoded pixels per output pixel: an 8000x6000 JPEG then
               decodes in 0.03-0.13 s instead of 0.4-0.5 s. Drafted JPEGs differ from a full decode by a mean
               of 0.2-0.5 grey levels and up to about a dozen at sharp edges (`python -m bench.decode_error`,
               in a checkout, measures it; docs/indexing.md gives the figures). The geometry is unchanged:
               `width`/`height` stay the original's, and the resize maps the drafted image's exact original
               extent, so boxes land on the same pixels. Images that are not drafted, carry no EXIF rotation
               and have no alpha or 16-bit samples decode to the same pixels as "torchvision".
  torchvision  exactly the pixels of torchvision's standard pipeline, `Image.open(path).convert("RGB")`
               then `weights.transforms()`: every JPEG fully decoded, EXIF orientation ignored (as PIL and
               torchvision's loaders ignore it), alpha dropped, not composited. `width`/`height` are the
               stored image's, and boxes refer to the stored, un-rotated pixels. Plain JPEGs are decoded by
               `torchvision.io.decode_jpeg` in one C++ call (pipeline.jpeg.ExactJpeg: the same libjpeg-turbo
               pixels as Pillow's, checked once per process), so decode threads do not queue for the GIL.

Only JPEG (and MPO), PNG, WebP, BMP, GIF and TIFF are decoded, in both modes: any other content is "not an
image" (Pillow's other plugins are never tried on dataset files; EPS, for one, would run Ghostscript).

Error reasons
-------------
A failed image's `error` is "<kind>: <detail>"; the kind, the text before the first ':', is one of
ERROR_KINDS (use `error_kind(error)` to get it):

  not an image  nothing recognisable: an empty file, text, random bytes, a format that is not read
                ("not an image: unrecognised format"), a null Parquet value ("not an image: no bytes:
                null in column 'jpg' (row 3)")
  truncated     the file ends before its image data does ("truncated: image file is truncated (16 bytes not
                processed)"), or the tar holding it does ("truncated: tar member truncated: ...")
  corrupt       a known format whose data is broken: a bad marker or checksum, an image signature followed
                by no readable header ("corrupt: broken data stream when reading image file")
  too large     width x height above `max_pixels`, checked from the header before any pixel is decoded
                (decompression bombs): "too large: 20000x20000 exceeds 178956970 pixels"
  unreadable    the file system refused: "file not found" (deleted after listing, dangling symlink),
                "permission denied", "symlink loop", "is a directory", "not a regular file" (a FIFO or
                device named like an image: never opened, so it cannot hang the job), or the OS's message;
                for an object store, its error ("file not found" for an object deleted after listing,
                "permission denied", HTTP 501 and other 4xx answers)
  unsupported   a recognised image Pillow cannot convert here (missing codec, unusual mode)
  failed        anything else, with the exception's type and message: a bug worth reporting

  unreadable after retries
                a transient failure (pipeline.retry: HTTP 5xx/429, a timeout, a reset connection, EIO,
                ...) that outlasted the retry budget, recorded only when the run asks for it
                (--record-failed-reads); otherwise such a failure is never a row: the shard attempt fails
                and runs again. `--retry-errors` indexes these images again.

The job adds two kinds of its own (jobs/worker.py, pipeline/loop.py), for failures the decoder cannot
report itself: "out of memory" and "crashed the decoder".

Known limit: a JPEG whose entropy-coded data is damaged (flipped or overwritten bytes, no stray marker)
decodes without error. libjpeg recovers and only warns ("Corrupt JPEG data: ..."), and Pillow discards
libjpeg warnings, so such a file is indexed `ok` with garbled pixels below the damage. A stray marker in
the scan, by contrast, is "corrupt".
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from actindex.pipeline.jpeg import ExactJpeg
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.retry import READS, RetryPolicy, TransientError, is_transient
from actindex.pipeline.storage import NullImageError, open_image_bytes, split_uri

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb threshold (2x MAX_IMAGE_PIXELS)
AFTER_RETRIES = "unreadable after retries"  # the kind of a transient failure recorded on purpose
ERROR_KINDS = (
    "not an image",
    "truncated",
    "corrupt",
    "too large",
    "unreadable",
    "unsupported",
    "failed",
    AFTER_RETRIES,
)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # what Image.open may identify (JPEG includes MPO)
DRAFT_MARGIN = 2  # a drafted JPEG keeps at least this many times the resized size
# why --decode torchvision and --device-decode do not go together (pipeline.gpu.GpuDecoder, jobs.spec)
DEVICE_DECODE_REFUSED = (
    "--decode torchvision gives Pillow's pixels exactly and the device decoder (nvjpeg) cannot: "
    "drop --device-decode (the JPEGs are then decoded on the CPU), or use --decode fast"
)
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# first bytes of formats in FORMATS, to tell "a JPEG with a broken header" from "not an image" (BMP's "BM"
# is too short to tell anything)
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


@dataclass
class DecodedImage:
    pixels: np.ndarray | None  # (3, crop, crop) uint8, None when decoding failed
    width: int  # original width (0 if unknown) in the boxes' frame: upright (fast), stored (torchvision)
    height: int  # original height (0 if unknown), in the same frame
    error: str | None  # "<kind>: <detail>" when decoding failed (see the module docstring)


class Decoder:
    """A stage: file path -> DecodedImage. Constructed once per worker, called per image or batch."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        retry: RetryPolicy | None = None,
        record_after_retries: bool = False,
        exact_jpeg: bool = True,
    ):
        """`exact_jpeg=False` keeps every decode in Pillow (the benchmarks compare the two)."""
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.retry = retry or READS  # a job passes its own (--retry-budget)
        self.record_after_retries = record_after_retries
        # The decoder enforces max_pixels itself, from the header, before any pixel is decoded; Pillow's own
        # process-wide limit would otherwise cap it at its default.
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = None
        Image.init()  # register every plugin once, then keep the formats this Pillow build can open
        self.formats = tuple(f for f in FORMATS if f in Image.OPEN)
        self.exact_jpeg = None
        if exact_jpeg and preprocessing.decode == "torchvision":
            self.exact_jpeg = ExactJpeg.here()

    def __call__(self, uri: str) -> DecodedImage:
        """The image at `uri`, or its error row. A transient failure to read it (pipeline.retry) is retried
        with `retry`; when it outlasts the budget, TransientError is raised (the shard attempt fails), or
        with `record_after_retries` the image is an "unreadable after retries" row."""
        try:
            return self.retry.call(self._decode, uri, what=uri)
        except TransientError as exc:
            if not self.record_after_retries:
                raise
            return DecodedImage(None, 0, 0, f"{AFTER_RETRIES}: {exc.detail}"[:300])

    def _decode(self, uri: str) -> DecodedImage:
        width = height = 0
        data = None
        try:
            if split_uri(uri)[0] == "file":
                _check_regular_file(uri)
                source = uri
                if self.exact_jpeg is not None and (data := _read_jpeg(uri)) is not None:
                    source = io.BytesIO(data)
            else:  # an object, a tar member or a Parquet value (pipeline.storage)
                data = open_image_bytes(uri)
                source = io.BytesIO(data)
            if self.exact_jpeg is not None and data is not None:
                pixels = self.exact_jpeg(
                    data if isinstance(data, bytearray) else bytearray(data), self.max_pixels
                )
                if pixels is not None:
                    height, width = pixels.shape[:2]
                    rgb = Image.fromarray(pixels, "RGB")
                    return DecodedImage(self._preprocess(rgb, width, height, None), width, height, None)
            with Image.open(source, formats=self.formats) as img:
                fast = self.preprocessing.decode == "fast"
                if img.width * img.height > self.max_pixels:  # from the header: nothing decoded yet
                    width, height = _upright_size(img) if fast and _exif_in_header(img) else img.size
                    raise _TooLarge(f"too large: {width}x{height} exceeds {self.max_pixels} pixels")
                width, height = img.size  # reported if decoding fails below
                box = None
                if fast:
                    width, height = _upright_size(img)  # may decode a PNG, whose EXIF can follow the pixels
                    box = self._draft(img, width, height)
                rgb = as_decoded(img, self.preprocessing.decode)
            return DecodedImage(self._preprocess(rgb, width, height, box), width, height, None)
        except Exception as exc:  # noqa: BLE001 - any decoder failure becomes an error row, never a crash
            if is_transient(exc):  # the store's or the disk's fault, not the image's: retried by __call__
                raise
            return DecodedImage(None, width, height, _describe(exc, uri, data))

    def decode_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Column form: adds pixels, ok, width, height and error columns to a batch with a `uri` column."""
        decoded = [self(str(uri)) for uri in batch["uri"]]
        crop = self.preprocessing.crop
        blank = np.zeros((3, crop, crop), dtype=np.uint8)
        out = dict(batch)
        out["pixels"] = np.stack([d.pixels if d.pixels is not None else blank for d in decoded])
        out["ok"] = np.array([d.error is None for d in decoded])
        out["width"] = np.array([d.width for d in decoded], dtype=np.int32)
        out["height"] = np.array([d.height for d in decoded], dtype=np.int32)
        out["error"] = np.array([d.error or "" for d in decoded], dtype=object)
        return out

    def _draft(self, img: Image.Image, width: int, height: int) -> tuple[float, float, float, float] | None:
        """Reduced-scale DCT decoding for large JPEGs; returns the upright drafted image's region that
        covers the whole original (None when nothing was drafted)."""
        if not isinstance(img, JpegImagePlugin.JpegImageFile):
            return None
        new_w, new_h = self.preprocessing.resized_size(width, height)
        need = (DRAFT_MARGIN * new_w, DRAFT_MARGIN * new_h)
        orientation = _orientation(img)
        if orientation in (5, 6, 7, 8):
            need = need[::-1]  # draft works on the stored (not yet rotated) image
        stored = img.size
        if min(stored[0] // need[0], stored[1] // need[1]) < 2:
            return None  # not worth it: decode fully, exactly as a plain open + resize would
        drafted = img.draft(img.mode, need)
        if drafted is None or img.size == stored:
            return None
        return _transpose_box(drafted[1], img.size, orientation)

    def _preprocess(self, img: Image.Image, width: int, height: int, box) -> np.ndarray:
        prep = self.preprocessing
        new_w, new_h = prep.resized_size(width, height)
        img = img.resize((new_w, new_h), resample=_RESAMPLE[prep.interpolation], box=box)
        left, top = prep.crop_origin(new_w, new_h)
        img = img.crop((left, top, left + prep.crop, top + prep.crop))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


class _TooLarge(ValueError):
    pass


class _NotRegularFile(OSError):
    pass


def _read_jpeg(path: str) -> bytearray | None:
    """A JPEG file's bytes, read into a writable buffer (torch wraps it without a copy); None for a file that
    does not start like a JPEG (Pillow opens it by its path, reading only what it needs)."""
    with open(path, "rb", buffering=0) as f:
        if f.read(3) != b"\xff\xd8\xff":
            return None
        f.seek(0)
        data = bytearray(os.fstat(f.fileno()).st_size)
        read = f.readinto(data)
        if read < len(data):  # shorter than its size a moment ago: keep what is there
            del data[read:]
        return data


def _check_regular_file(uri: str) -> None:
    """Raise for what Image.open must not touch: missing files, directories, FIFOs and devices (a FIFO
    would block the worker forever)."""
    mode = os.stat(uri).st_mode  # follows symlinks: FileNotFoundError, PermissionError, ELOOP come from here
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), uri)
    if not stat.S_ISREG(mode):
        raise _NotRegularFile("not a regular file")


def _orientation(img: Image.Image) -> int:
    return img.getexif().get(0x0112, 1)


def _exif_in_header(img: Image.Image) -> bool:
    """Whether getexif() can answer without decoding the pixels (Pillow decodes a PNG to look for an eXIf
    chunk after its image data)."""
    return not isinstance(img, PngImagePlugin.PngImageFile) or "exif" in img.info


def _upright_size(img: Image.Image) -> tuple[int, int]:
    return (img.height, img.width) if _orientation(img) in (5, 6, 7, 8) else (img.width, img.height)


def _transpose_box(box, size: tuple[int, int], orientation: int) -> tuple[float, float, float, float]:
    """Where the region `box` of a stored image of `size` lands once EXIF orientation is applied (the same
    transposition ImageOps.exif_transpose makes)."""
    x0, y0, x1, y1 = box
    w, h = size
    if orientation in (2, 3):  # mirrored horizontally (3 = rotated 180 = mirrored both ways)
        x0, x1 = w - x1, w - x0
    if orientation in (3, 4):
        y0, y1 = h - y1, h - y0
    if orientation == 5:  # transpose: (x, y) -> (y, x)
        return (y0, x0, y1, x1)
    if orientation == 6:  # rotated 90 clockwise to display: (x, y) -> (h - y, x)
        return (h - y1, x0, h - y0, x1)
    if orientation == 7:  # transverse: (x, y) -> (h - y, w - x)
        return (h - y1, w - x1, h - y0, w - x0)
    if orientation == 8:  # rotated 90 counter-clockwise to display: (x, y) -> (y, w - x)
        return (y0, w - x1, y1, w - x0)
    return (x0, y0, x1, y1)


def as_decoded(img: Image.Image, decode: str) -> Image.Image:
    """The RGB image an opened file becomes under `decode` (Preprocessing.decode), in the frame its boxes
    refer to: upright for "fast", as stored for "torchvision" (the grid cuts its crops from this)."""
    if decode == "torchvision":
        return img.convert("RGB")  # torchvision's pil_loader, exactly
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of any PIL image: first frame, 16-bit/float scaled to 8 bits, alpha over white."""
    img.seek(0)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 1.0)
        img = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def error_kind(error: str) -> str:
    """The kind of an error reason (one of ERROR_KINDS): the text before its first ':'."""
    return error.split(":", 1)[0]


# What actindex before the retry layer (pipeline.retry) stored for failures that were transient: an object
# store's 5xx or 429 as s3fs translated it, a network file system's errno, or a connection error caught as
# "failed". A rerun indexes the shards holding such rows again (jobs.incremental.shards_to_retry).
TRANSIENT_STORED_UNREADABLE = frozenset(
    {
        "service unavailable",  # 503 (a HEAD's answer has no body)
        "please reduce your request rate.",  # 503 SlowDown
        "slow down",
        "internal server error",  # 500 (HEAD)
        "we encountered an internal error. please try again.",  # 500 InternalError
        "bad gateway",  # 502
        "gateway timeout",  # 504
        "too many requests",  # 429
        "input/output error",  # EIO
        "connection timed out",  # ETIMEDOUT
        "stale file handle",  # ESTALE
        "connection reset by peer",  # ECONNRESET
        "software caused connection abort",  # ECONNABORTED
        "connection refused",  # ECONNREFUSED
        "remote i/o error",  # EREMOTEIO
    }
)
TRANSIENT_STORED_FAILED = frozenset(
    {  # "failed: <exception class>: ..." for the connection errors of pipeline.retry.TRANSIENT_CLASSES
        "ClientPayloadError",
        "ConnectionClosedError",
        "EndpointConnectionError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ServerDisconnectedError",
        "HTTPClientError",
        "FSTimeoutError",
        "TimeoutError",
    }
)


def stored_error_is_transient(error: str) -> bool:
    """Whether an `images.error` written by an earlier actindex is one of the transient failures it did not
    tell apart (TRANSIENT_STORED_UNREADABLE, TRANSIENT_STORED_FAILED)."""
    kind, _, detail = error.partition(": ")
    if kind == "unreadable":
        return detail.strip() in TRANSIENT_STORED_UNREADABLE
    if kind == "failed":
        return detail.split(":", 1)[0].strip() in TRANSIENT_STORED_FAILED
    return False


def describe_error(exc: BaseException) -> str:
    """A short, user-facing reason for a decode failure: "<kind>: <detail>", kind in ERROR_KINDS."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    lower = message.lower()
    if isinstance(exc, _TooLarge):
        return message
    if isinstance(exc, Image.DecompressionBombError) or "decompressed data too large" in lower:
        return f"too large: {message}"[:300]
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: unrecognised format"
    if isinstance(exc, NullImageError):
        return f"not an image: {message}"
    if isinstance(exc, _NotRegularFile):
        return "unreadable: not a regular file"
    if isinstance(exc, FileNotFoundError):
        return "unreadable: file not found"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "unreadable: is a directory"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "unreadable: symlink loop"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"unreadable: {(exc.strerror or message).lower()}"
    if "truncated" in lower or isinstance(exc, EOFError):
        return f"truncated: {message}"[:300]
    if "not available" in lower or "not supported" in lower or "unsupported" in lower:
        return f"unsupported: {message}"[:300]
    if isinstance(exc, (OSError, SyntaxError, ValueError, zlib.error, struct.error)) or "broken" in lower:
        # Pillow's decoders report bad data as OSError ("broken data stream ..."), SyntaxError ("broken
        # PNG file", "not a TIFF file"), ValueError (impossible header values) or zlib/struct errors
        return f"corrupt: {message}"[:300]
    return f"failed: {type(exc).__name__}: {message}"[:300]


def _describe(exc: Exception, uri: str, data: bytes | None) -> str:
    reason = describe_error(exc)
    if isinstance(exc, UnidentifiedImageError):
        signature = _signature(uri, data)
        if signature:
            return f"corrupt: {signature} signature but no readable header"
    return reason


def _signature(uri: str, data: bytes | None) -> str | None:
    try:
        if data is not None:
            head = data[:16]
        else:
            with open(uri, "rb") as f:
                head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)
