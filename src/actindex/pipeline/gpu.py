"""The GPU path: JPEG bytes -> decode + resize + crop on the device -> forward -> per-unit (max, argmax).

    decoder = GpuDecoder(prep, "cuda")
    batch = decoder(list_of_jpeg_bytes)        # DecodedBatch: pixels (B, 3, crop, crop) uint8 on the device
    recorder = GpuRecorder(model, ["layer3", "layer4"], prep, "cuda", precision="bf16")
    out = recorder(batch.ok_pixels())          # {layer: (act (B, U) float32, pos (B, U) int32)}

    pending = recorder.submit(batch.ok_pixels())    # the async form: enqueue forward, reductions, copies
    out = pending.result()                     # wait for this batch's (B, U) results only

The loop that overlaps them (decoding in a thread, batch i+1 submitted before batch i is waited for) is
pipeline.loop's, the one every worker runs.

Decoding. JPEGs go to `torchvision.io.decode_jpeg(list, device=...)` (nvjpeg on CUDA: the hardware decoder
for baseline JPEGs on A100/H100), in RGB mode, so grayscale JPEGs come out RGB. Everything else goes to the
CPU `pipeline.decode.Decoder`, per image, and so does every JPEG the fast path is not sure about: a header
this module's small parser cannot read, lossless, arithmetic-coded or 12-bit JPEGs, 4-component (CMYK/YCCK)
JPEGs on CUDA, no end-of-image marker after the scan (truncated: the CPU decoder names it), more pixels than
`max_pixels`, or a file the device decoder rejects (a rejected list is split in halves until the culprit is
alone, then that one image is decoded on the CPU). A failed image is a row with the CPU decoder's reason,
never a dropped row.

EXIF orientation is read from the header by `parse_jpeg_header` (the first Exif APP1 segment, falling back
to an XMP tiff:Orientation, as Pillow's getexif does) and applied on the device with flips and transposes:
torchvision's `apply_exif_orientation` is implemented only for CPU decoding, so the same code serves both
devices. `width`/`height` are the upright image's, as the CPU decoder reports.

Geometry is the CPU path's exactly: the shorter side is resized to `prep.resized_size(w, h)` and the crop is
taken at `prep.crop_origin(...)`, so receptive-field boxes map back identically. The resize itself is
torch's antialiased interpolation (bilinear, bicubic; the PIL-style kernels) and a product with Pillow's
own weights for lanczos, in float32, rounded half up to uint8; nearest picks exactly Pillow's pixels.
Pixel values differ from Pillow's by rounding (Pillow rounds to uint8 between its horizontal and vertical
passes) and, on CUDA, by nvjpeg's IDCT and chroma upsampling; the CPU decoder's DCT-domain draft decoding
of large JPEGs is not used, so large images differ more (the geometry is the same). Pillow's pixels are
what `decode="torchvision"` promises, so a GpuDecoder refuses that preprocessing (DEVICE_DECODE_REFUSED):
such a run decodes on the CPU.

Recording reuses `pipeline.recorder.LayerTrace` / `reduce_units`: hooks live inside each call and the
forward stops after the last chosen layer. By default on CUDA the forward runs under bf16 autocast with
channels_last; precision "fp32" runs without autocast and with TF32 off (exact up to summation order).
The max is taken in the activation's dtype (exact there) and converted to float32. Only the (B, U) values
and positions leave the device, copied asynchronously into pinned host memory behind a CUDA event.
`compile=True` traces the model with torch.fx (reductions inserted right after each chosen layer's node,
everything after the last one removed: the same semantics as the hooks) and runs it through
`torch.compile`. Nothing here imports ray.

Streams and overlap (CUDA). The decoder resizes on a high-priority side stream of its own and hands nvjpeg
yet another stream to allocate on (buffers are recycled only once `record_stream` says their readers are
done); the recorder runs the forward, the reductions and the copies on its own non-default stream, after
whatever the caller's current stream had queued. `torchvision.io.decode_jpeg` blocks its calling thread
until nvjpeg is done (about 0.1 ms of host time per ImageNet-sized JPEG on an H100), so the worker decodes
in a background thread (pipeline.loop.Prefetcher): nvjpeg releases the GIL, and the main thread keeps the
device busy meanwhile. Measured on one H100 (bench/gpu_stage.py, ResNet-50 relu + layer1..4, bf16,
batch 256): decode + resize 12-15k images/s alone, forward + reductions 11.5k (eager) / 18k (compiled),
end to end from JPEG bytes 7.2k (eager) / 9.0k (compiled) with the decode thread.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from actindex.pipeline.decode import DEFAULT_MAX_PIXELS, DEVICE_DECODE_REFUSED, DecodedImage, Decoder
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.jpeg import JpegHeader, parse_jpeg_header
from actindex.pipeline.layers import describe_layers
from actindex.pipeline.loop import DecodedBatch
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.recorder import LayerTrace, reduce_units

if TYPE_CHECKING:
    import torch


PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}  # torch dtypes, by name (torch loads late)
DEVICE_SOF = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive Huffman: 8-bit DCT JPEGs
DEFAULT_BATCH_PIXELS = 128 * 1024 * 1024  # decoded pixels per device decode call / resize group (memory)


def device_decodable(header: JpegHeader | None, device_type: str, max_pixels: int) -> bool:
    """Whether the device decoder gets this JPEG (otherwise the CPU Decoder does)."""
    if header is None or not header.complete:
        return False
    if header.sof not in DEVICE_SOF or header.precision != 8:
        return False
    if header.components not in ((1, 3) if device_type == "cuda" else (1, 3, 4)):
        return False  # CMYK/YCCK on nvjpeg: Adobe's inverted CMYK is Pillow's job
    return 0 < header.width * header.height <= max_pixels


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation to a (C, H, W) image, as PIL's ImageOps.exif_transpose does."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip((-2, -1))
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))  # rotated 90 clockwise to display
    if orientation == 7:
        return image.transpose(-2, -1).flip((-2, -1))
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


# ------------------------------------------------------------------------------------------------ resize


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


def _lanczos_weights(in_size: int, out_size: int, start: int, count: int) -> np.ndarray:
    """(count, in_size) weights of output pixels start..start+count of Pillow's lanczos resize (its
    precompute_coeffs: support scaled when reducing, window clipped to the image, weights normalized)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    weights = np.zeros((count, in_size), dtype=np.float64)
    for row, xx in enumerate(range(start, start + count)):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = _lanczos((np.arange(lo, hi) - center + 0.5) / filterscale)
        total = w.sum()
        weights[row, lo:hi] = w / total if total != 0 else w
    return weights.astype(np.float32)


def _nearest_index(in_size: int, out_size: int, start: int, count: int) -> np.ndarray:
    """Source pixels of Pillow's nearest resize: it steps through (x + 0.5) * in / out by repeated double
    additions and truncates, so the same accumulation reproduces it where a closed form misses by one."""
    step = in_size / out_size
    centres = np.add.accumulate(np.r_[0.5 * step, np.full(out_size - 1, step)])
    return np.clip(centres.astype(np.int64), 0, in_size - 1)[start : start + count]


@functools.lru_cache(maxsize=1024)
def _resize_operand(kind: str, in_size: int, out_size: int, start: int, count: int, device: str):
    """Cached on the device: built once per image size, never copied from the host again."""
    import torch

    if kind == "lanczos":
        return torch.from_numpy(_lanczos_weights(in_size, out_size, start, count)).to(device)
    return torch.from_numpy(_nearest_index(in_size, out_size, start, count)).to(device)


def resize_crop(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(G, 3, H, W) uint8 upright images of one size -> (G, 3, crop, crop) uint8, the CPU path's geometry."""
    import torch
    import torch.nn.functional as F

    _, _, height, width = images.shape
    new_w, new_h = prep.resized_size(width, height)
    left, top = prep.crop_origin(new_w, new_h)
    c, device = prep.crop, str(images.device)
    if prep.interpolation == "nearest":
        rows = _resize_operand("nearest", height, new_h, top, c, device)
        cols = _resize_operand("nearest", width, new_w, left, c, device)
        return images.index_select(2, rows).index_select(3, cols)
    x = images.float()
    if prep.interpolation == "lanczos":
        wy = _resize_operand("lanczos", height, new_h, top, c, device)
        wx = _resize_operand("lanczos", width, new_w, left, c, device)
        out = torch.matmul(wy, torch.matmul(x, wx.T))
    else:
        resized = F.interpolate(
            x, size=(new_h, new_w), mode=prep.interpolation, antialias=True, align_corners=False
        )
        out = resized[:, :, top : top + c, left : left + c]
    return out.add(0.5).clamp_(0.0, 255.0).to(torch.uint8)  # round half up, like Pillow


# ------------------------------------------------------------------------------------------------ decode


class GpuDecoder:
    """A stage: list of encoded images (bytes) -> DecodedBatch, JPEGs on the device, the rest on the CPU.

    On CUDA the work runs on a side stream of its own. By default the returned pixels are ready to use on
    the caller's current stream (made to wait for the side stream; the host does not wait). With
    `wait=False` nothing is enqueued on the caller's stream: for decoding in another thread (a Prefetcher),
    where the consumer calls `batch.wait()` or `batch.ok_pixels()` on its own thread.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        device: str | torch.device = "cuda",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
        pin_inputs: bool = False,
    ):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        if preprocessing.decode != "fast":
            raise InvalidInputError(DEVICE_DECODE_REFUSED)
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self.batch_pixels = batch_pixels
        self.pin_inputs = pin_inputs and self.device.type == "cuda"
        self.cpu = Decoder(preprocessing, max_pixels)
        self._decode_jpeg = decode_jpeg
        self._rgb = ImageReadMode.RGB
        cuda = self.device.type == "cuda"
        # resize, crop, uploads; high priority: its few small kernels go ahead of a running forward's blocks
        self.stream = torch.cuda.Stream(self.device, priority=-1) if cuda else None
        # nvjpeg writes from a stream of its own into buffers it allocates on the current stream: with a
        # stream that runs nothing as the current one, a buffer is handed out again only once the work
        # recorded on it (record_stream) is over, without the host ever waiting
        self.alloc_stream = torch.cuda.Stream(self.device) if cuda else None
        self.timings: collections.Counter = collections.Counter()  # host seconds per phase, summed

    def __call__(
        self,
        data: Sequence[bytes],
        uris: Sequence[str] | None = None,
        wait: bool = True,
        fallback: Callable[[int], DecodedImage] | None = None,
    ) -> DecodedBatch:
        """Decode `data`; `uris` (the files the bytes came from), when given, is what the CPU fallback
        opens, so its reasons ("unreadable: ...") are about the real file. `fallback(i)`, when given,
        decodes image i on the CPU instead (the job passes its crash-journaled decoder)."""
        import torch

        if uris is not None and len(uris) != len(data):
            raise ValueError(f"{len(data)} images but {len(uris)} uris")
        fallback = fallback or (lambda i: self._cpu_decode(data[i], None if uris is None else uris[i]))
        if self.stream is None:
            return self._decode(data, fallback)
        with torch.cuda.stream(self.stream):
            batch = self._decode(data, fallback)
            batch.ready = torch.cuda.Event()
            batch.ready.record(self.stream)
        if wait:
            batch.wait()
        return batch

    def decode_files(self, uris: Sequence[str]) -> DecodedBatch:
        """Read and decode files; one that cannot be read is the CPU decoder's to describe."""
        data = []
        for uri in uris:
            try:
                with open(uri, "rb") as f:
                    data.append(f.read())
            except OSError:
                data.append(b"")  # not a JPEG: the CPU decoder opens the uri and names the problem
        return self(data, uris)

    def _decode(self, data: Sequence[bytes], fallback: Callable[[int], DecodedImage]) -> DecodedBatch:
        import torch

        size = len(data)
        ok = np.zeros(size, dtype=bool)
        on_device = np.zeros(size, dtype=bool)
        width = np.zeros(size, dtype=np.int32)
        height = np.zeros(size, dtype=np.int32)
        error = np.full(size, "", dtype=object)

        clock = time.perf_counter()
        headers = {}
        for i, blob in enumerate(data):
            header = parse_jpeg_header(blob)
            if device_decodable(header, self.device.type, self.max_pixels):
                headers[i] = header
        clock = self._tick("parse", clock)
        decoded = self._device_decode(data, headers)  # {i: (3, H, W) uint8 on device}; rejects are absent
        clock = self._tick("device decode", clock)

        groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        for i, image in decoded.items():
            image = orient(image, headers[i].orientation)
            h, w = image.shape[-2:]
            width[i], height[i] = w, h
            ok[i] = on_device[i] = True
            groups.setdefault((h, w), []).append((i, image))
        parts: list[torch.Tensor] = []  # (n, 3, crop, crop) blocks whose rows belong to `order`
        order: list[int] = []
        for (h, w), members in groups.items():
            step = max(1, self.batch_pixels // (h * w))
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                parts.append(resize_crop(torch.stack([image for _, image in chunk]), self.preprocessing))
                order.extend(i for i, _ in chunk)
        del decoded, groups
        clock = self._tick("resize", clock)

        cpu_pixels = []
        for i in np.flatnonzero(~ok):
            result = fallback(int(i))
            width[i], height[i] = result.width, result.height
            if result.error is None:
                ok[i] = True
                cpu_pixels.append(result.pixels)
                order.append(int(i))
            else:
                error[i] = result.error
        if cpu_pixels:
            stacked = torch.from_numpy(np.stack(cpu_pixels))
            if self.device.type == "cuda":
                stacked = stacked.pin_memory()
            parts.append(stacked.to(self.device, non_blocking=True))
        clock = self._tick("cpu fallback", clock)
        pixels = self._assemble(parts, order, size)
        self._tick("assemble", clock)
        return DecodedBatch(pixels, ok, width, height, error, on_device)

    def _assemble(self, parts: list[torch.Tensor], order: list[int], size: int) -> torch.Tensor:
        """(size, 3, crop, crop): row order[k] is row k of the concatenated parts; other rows are zeros."""
        import torch

        c = self.preprocessing.crop
        rows = (torch.cat(parts) if len(parts) > 1 else parts[0]) if parts else None
        if rows is not None and order == list(range(size)):
            return rows
        pixels = torch.zeros((size, 3, c, c), dtype=torch.uint8, device=self.device)
        if rows is not None:
            index = torch.tensor(order, dtype=torch.int64)
            if self.device.type == "cuda":
                index = index.pin_memory().to(self.device, non_blocking=True)
            pixels.index_copy_(0, index, rows)
        return pixels

    def _tick(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[phase] += now - since
        return now

    def _device_decode(self, data: Sequence[bytes], headers: dict[int, JpegHeader]) -> dict:
        """Decode the chosen JPEGs in calls of at most batch_pixels pixels; bisect a rejected call."""
        import torch

        decoded: dict[int, torch.Tensor] = {}
        chunk: list[int] = []
        pixels = 0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            if self.pin_inputs and headers:
                # one pinned buffer for the batch, so nvjpeg's copies of the bitstreams are plain DMAs
                # (measured on an H100: no faster than the pageable copies, hence off by default)
                joined = torch.frombuffer(b"".join(data[i] for i in headers), dtype=torch.uint8).pin_memory()
                tensors, offset = {}, 0
                for i in headers:
                    tensors[i] = joined[offset : offset + len(data[i])]
                    offset += len(data[i])
            else:
                tensors = {i: torch.frombuffer(data[i], dtype=torch.uint8) for i in headers}
            for i, header in headers.items():
                if chunk and pixels + header.width * header.height > self.batch_pixels:
                    self._decode_or_split(chunk, tensors, decoded)
                    chunk, pixels = [], 0
                chunk.append(i)
                pixels += header.width * header.height
            if chunk:
                self._decode_or_split(chunk, tensors, decoded)
        return decoded

    def _decode_or_split(self, indices: list[int], tensors: dict, decoded: dict) -> None:
        try:
            with warnings.catch_warnings(), _on_stream(self.alloc_stream):
                warnings.simplefilter("ignore")  # torchvision's deprecation notice, libjpeg's warnings
                images = self._decode_jpeg([tensors[i] for i in indices], mode=self._rgb, device=self.device)
        except RuntimeError:
            if len(indices) == 1:
                return  # the CPU decoder gets it
            half = len(indices) // 2
            self._decode_or_split(indices[:half], tensors, decoded)
            self._decode_or_split(indices[half:], tensors, decoded)
            return
        if self.stream is not None:
            self.stream.wait_stream(self.alloc_stream)  # which waits for nvjpeg's stream
        for i, image in zip(indices, images, strict=True):
            if image.dim() != 3 or image.shape[0] != 3:
                continue  # not what RGB mode promises: leave it to the CPU decoder
            if self.stream is not None:
                image.record_stream(self.stream)
            decoded[i] = image

    def _cpu_decode(self, blob: bytes, uri: str | None) -> DecodedImage:
        if uri is not None:
            return self.cpu(uri)
        fd, path = tempfile.mkstemp(prefix="actindex-gpu-", suffix=".img")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            return self.cpu(path)
        finally:
            os.unlink(path)


def _on_stream(stream):
    import torch

    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ record


class PendingRecord:
    """Results of one submitted batch: (B, sum U) act/pos on the host (pinned on CUDA) behind an event."""

    def __init__(self, act, pos, event, layers, units):
        self.act, self.pos, self.event = act, pos, event
        self.layers, self.units = layers, units

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def result(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Wait for this batch's copies only; {layer: (act (B, U) float32, pos (B, U) int32)}."""
        if self.event is not None:
            self.event.synchronize()
        act, pos = self.act.numpy(), self.pos.numpy()
        out, start = {}, 0
        for name in self.layers:
            stop = start + self.units[name]
            # copies: they own their memory, so the pinned block returns to torch's cache
            out[name] = (np.ascontiguousarray(act[:, start:stop]), np.ascontiguousarray(pos[:, start:stop]))
            start = stop
        return out


@contextlib.contextmanager
def _no_tf32(active: bool):
    """fp32 means fp32: TF32 convolutions and matmuls off for the duration (restored afterwards)."""
    import torch

    if not active:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class GpuRecorder:
    """A stage: uint8 pixels on the device -> {layer: (act (B, U) float32, pos (B, U) int32)} numpy.

    Same contract as `pipeline.recorder.ActivationRecorder` (so `record_batch` works with it); the model is
    moved to `device` (and to channels_last) in place. `submit` is the asynchronous form.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[str],
        preprocessing: Preprocessing,
        device: str | torch.device = "cuda",
        precision: str = "bf16",
        channels_last: bool = True,
        compile: bool | str = False,
    ):
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = None if PRECISIONS[precision] is None else getattr(torch, PRECISIONS[precision])
        self.channels_last = channels_last
        self.layers = list(layers)
        crop = (preprocessing.crop, preprocessing.crop)
        self.units = {
            name: info.channels for name, info in describe_layers(model.eval(), self.layers, crop).items()
        }
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std, device=self.device).view(1, 3, 1, 1)
        # a stream of its own: torch's default stream is CUDA's legacy stream, which nvjpeg's synchronous
        # calls wait behind; on a non-blocking stream the forward does not hold up the next batch's decode
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._compiled = None
        self._compiled_batch: int | None = None
        if compile:
            graph = traced_reductions(self.model, self.layers)
            backend = compile if isinstance(compile, str) else "inductor"
            self._compiled = torch.compile(_compiled_step(self, graph), backend=backend, dynamic=False)

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        # the same operations as ActivationRecorder.normalize, so fp32 results agree bit for bit on the CPU
        import torch

        x = torch.as_tensor(pixels).to(self.device, non_blocking=True).float().div_(255.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def forward(self, pixels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, sum U) float32 maxima and int32 positions on the device, layers in `self.layers` order,
        ready for use on the caller's current stream."""
        import torch

        act, pos = self._forward(pixels)
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            act.record_stream(current)
            pos.record_stream(current)
        return act, pos

    def _forward(self, pixels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward on the recorder's own stream (CUDA), after whatever the caller's current stream had
        queued (the decoder's pixels, say)."""
        import torch

        if self.stream is None:
            return self._run(pixels)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if isinstance(pixels, torch.Tensor) and pixels.is_cuda:
            pixels.record_stream(self.stream)
        with torch.cuda.stream(self.stream):
            return self._run(pixels)

    def _run(self, pixels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        with torch.inference_mode(), _no_tf32(self.dtype is None and self.device.type == "cuda"):
            if self._compiled is not None:
                return self._forward_compiled(pixels)
            x = self.normalize(pixels)
            with self._autocast(), LayerTrace(self.model, self.layers) as trace:
                self.model(x)
            missing = [name for name in self.layers if name not in trace.reduced]
            if missing:
                raise RuntimeError(f"layers {missing} were not reached by the forward pass")
            act = torch.cat([trace.reduced[name][0] for name in self.layers], dim=1)
            pos = torch.cat([trace.reduced[name][1] for name in self.layers], dim=1)
            return act, pos

    def _forward_compiled(self, pixels) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        pixels = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        size = pixels.shape[0]
        if self._compiled_batch is None:
            self._compiled_batch = size
        if size < self._compiled_batch:  # pad a short last batch rather than compile again
            pad = pixels.new_zeros((self._compiled_batch - size, *pixels.shape[1:]))
            pixels = torch.cat([pixels, pad])
        act, pos = self._compiled(pixels)
        return act[:size], pos[:size]

    def submit(self, pixels: np.ndarray | torch.Tensor) -> PendingRecord:
        """Enqueue forward, reductions and the device-to-host copies; returns without waiting (CUDA)."""
        import torch

        act, pos = self._forward(pixels)
        if self.stream is None:
            return PendingRecord(act.cpu(), pos.cpu(), None, self.layers, self.units)
        with torch.cuda.stream(self.stream):
            act_host = torch.empty(act.shape, dtype=act.dtype, pin_memory=True)
            pos_host = torch.empty(pos.shape, dtype=pos.dtype, pin_memory=True)
            act_host.copy_(act, non_blocking=True)
            pos_host.copy_(pos, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return PendingRecord(act_host, pos_host, event, self.layers, self.units)

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.submit(pixels).result()


def _compiled_step(recorder: GpuRecorder, graph: torch.fx.GraphModule) -> torch.nn.Module:
    """normalize -> traced forward with reductions, as one module for torch.compile."""
    import torch

    class CompiledStep(torch.nn.Module):  # defined here: this module does not import torch at load time
        def __init__(self):
            super().__init__()
            self.graph_module = graph
            self.mean, self.std = recorder.mean, recorder.std
            self.channels_last = recorder.channels_last
            self.dtype = recorder.dtype
            self.device_type = recorder.device.type

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = (pixels.float() / 255.0 - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
                return self.graph_module(x)

    return CompiledStep()


def traced_reductions(model: torch.nn.Module, layers: Sequence[str]) -> torch.fx.GraphModule:
    """An fx graph of `model` returning (act (B, sum U), pos (B, sum U)) like the hooks do: each chosen
    layer's output is reduced right after the node that makes it (before any later in-place op touches
    it), and every node after the last reduction is removed (the forward stops there).

    A layer is matched as torchvision's create_feature_extractor matches return nodes: the last node in
    the module's scope on its first call. Raises ValueError when the model cannot be traced.
    """
    import torch
    from torchvision.models.feature_extraction import NodePathTracer

    tracer = NodePathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - fx's failures are many and all mean the same here
        raise InvalidInputError(
            f"--compile needs an fx-traceable model: {type(exc).__name__}: {exc}"
        ) from exc
    targets: dict[str, torch.fx.Node] = {}
    for node in reversed(list(graph.nodes)):
        qualname = tracer.node_to_qualname.get(node)
        if qualname is None:
            continue
        for name in layers:  # nested layers (layer4, layer4.1) may end on the same node: each gets it
            depth = name.count(".")
            if name not in targets and ".".join(qualname.split(".")[: depth + 1]) == name:
                targets[name] = node
    missing = [name for name in layers if name not in targets]
    if missing:
        raise InvalidInputError(f"--compile: layers {missing} have no node in the traced graph")
    reduced = {}
    for name in layers:
        with graph.inserting_after(targets[name]):
            reduced[name] = graph.call_function(reduce_units, (targets[name],))
    order = {node: i for i, node in enumerate(graph.nodes)}
    last = max(reduced.values(), key=order.__getitem__)
    for node in reversed(list(graph.nodes)):
        if node is last:
            break
        graph.erase_node(node)
    # appended at the end, after `last`
    acts = [graph.call_function(_getitem, (reduced[name], 0)) for name in layers]
    poss = [graph.call_function(_getitem, (reduced[name], 1)) for name in layers]
    act = graph.call_function(torch.cat, (acts,), {"dim": 1})
    pos = graph.call_function(torch.cat, (poss,), {"dim": 1})
    graph.output((act, pos))
    graph.lint()
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__ + "Reduced")


def _getitem(pair, index: int):
    return pair[index]
