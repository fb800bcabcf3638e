"""The model loop: what every worker runs, and what `actindex bench` and the GPU benchmark measure.

    batches = Prefetcher(decode, item_batches, pool, depth=2)   # decoding starts now, in `pool`'s threads
    for batch, results in record_batches(recorder, batches):
        ...   # results: {layer: (act (n, U) float32, pos (n, U) int32)} for the batch's ok rows

Decoding runs ahead in background threads (Pillow and nvjpeg release the GIL while they work), and the
forward of batch i+1 is submitted before the host waits for batch i's results, so on a GPU decoding, the
host's copies and the device's work overlap. A batch that runs out of memory is split in halves until
it fits; an image that does not fit alone becomes an error ("out of memory"). Any other exception in a
forward is retried once (a transient fault costs nothing) and raised the second time.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


log = logging.getLogger("actindex")


@dataclass
class DecodedBatch:
    """A decoded batch: pixels as a tensor (on the model's device if decoded there), metadata on the host."""

    pixels: torch.Tensor  # (B, 3, crop, crop) uint8; zeros where ok is False
    ok: np.ndarray  # (B,) bool
    width: np.ndarray  # (B,) int32, upright original width (0 if unknown)
    height: np.ndarray  # (B,) int32
    error: np.ndarray  # (B,) object, "" where ok, else "<kind>: <detail>"
    on_device: np.ndarray  # (B,) bool: decoded by the device decoder (False: the CPU Decoder's work)
    ready: torch.cuda.Event | None = None  # CUDA: recorded on the decoder's stream when pixels are done

    def wait(self, stream: torch.cuda.Stream | None = None) -> torch.Tensor:
        """`pixels`, safe to use on `stream` (default: the current one), which is made to wait for the
        decoder's work; the host never waits. Needed only for batches decoded with `wait=False`."""
        import torch

        if self.ready is not None:
            stream = stream or torch.cuda.current_stream(self.pixels.device)
            stream.wait_event(self.ready)
            self.pixels.record_stream(stream)
        return self.pixels

    def ok_pixels(self) -> torch.Tensor:
        """The rows whose `ok` is True (all of `pixels` when nothing failed), without a host sync."""
        return self.rows(np.flatnonzero(self.ok))

    def rows(self, index: np.ndarray) -> torch.Tensor:
        import torch

        pixels = self.wait()
        if len(index) == len(self.ok) and (index == np.arange(len(index))).all():
            return pixels
        select = torch.from_numpy(np.asarray(index, dtype=np.int64))
        if pixels.is_cuda:
            select = select.pin_memory().to(pixels.device, non_blocking=True)
        return pixels.index_select(0, select)

    def fail(self, index: np.ndarray, reason: str) -> None:
        """Record the rows `index` as errors (their pixels are not used any more)."""
        self.ok[index] = False
        self.error[index] = reason


class Prefetcher:
    """Iterate over `decode(batch)` for each of `batches`, in order, with up to `depth` of them decoding
    ahead in `pool` (`depth` may be a function, asked before each batch is handed out: a pool that grows
    gets more batches ahead). Decoding starts when the Prefetcher is made, not when iteration begins."""

    def __init__(
        self, decode: Callable, batches: Iterable, pool: Executor, depth: int | Callable[[], int] = 2
    ):
        self._decode, self._pool = decode, pool
        self._depth = depth if callable(depth) else lambda: depth
        self._batches = iter(batches)
        self._pending: collections.deque = collections.deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < max(1, self._depth()):
            batch = next(self._batches, None)
            if batch is None:
                return
            self._pending.append(self._pool.submit(self._decode, batch))

    def __iter__(self) -> Iterator:
        while self._pending:
            future = self._pending.popleft()
            self._fill()
            yield future.result()

    def close(self) -> None:
        """Cancel decodes not started yet and wait for running ones (their results are dropped)."""
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                future.exception()
        self._pending.clear()


class Ready:
    """A result that is already on the host (the synchronous recorders' submit, split batches)."""

    def __init__(self, results: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.results = results

    def result(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.results


def record_batches(recorder, batches: Iterable[DecodedBatch]) -> Iterator[tuple[DecodedBatch, dict]]:
    """(batch, {layer: (act, pos)} for the batch's ok rows), in order; batch i+1 is submitted before
    batch i's results are waited for."""
    pending = None
    for batch in batches:
        submitted = (batch, submit(recorder, batch))
        if pending is not None:
            yield pending[0], pending[1].result()
        pending = submitted
    if pending is not None:
        yield pending[0], pending[1].result()


def submit(recorder, batch: DecodedBatch):
    """Start the forward of the batch's ok rows; splits it on out-of-memory, retries other errors once."""
    import torch

    rows = np.flatnonzero(batch.ok)
    if len(rows) == 0:
        return Ready(empty_results(recorder))
    try:
        return recorder.submit(batch.rows(rows))
    except torch.OutOfMemoryError:
        return Ready(_record_or_split(recorder, batch, rows))
    except Exception as exc:  # noqa: BLE001 - retried once, then raised
        log.warning("model stage failed on a batch (%s: %s); retrying it once", type(exc).__name__, exc)
        return Ready(recorder.submit(batch.rows(rows)).result())


def _record_or_split(recorder, batch: DecodedBatch, rows: np.ndarray) -> dict:
    import torch

    if recorder.device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        return recorder.submit(batch.rows(rows)).result()
    except torch.OutOfMemoryError as exc:
        if len(rows) == 1:
            batch.fail(rows, f"out of memory: {' '.join(str(exc).split())[:200]}")
            return empty_results(recorder)
        log.warning("out of memory on a batch of %d images; retrying it in halves", len(rows))
        half = len(rows) // 2
        return concat_results(
            [_record_or_split(recorder, batch, rows[:half]), _record_or_split(recorder, batch, rows[half:])]
        )


def empty_results(recorder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        name: (np.empty((0, units), dtype=np.float32), np.empty((0, units), dtype=np.int32))
        for name, units in recorder.units.items()
    }


def concat_results(parts: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        name: (np.concatenate([p[name][0] for p in parts]), np.concatenate([p[name][1] for p in parts]))
        for name in parts[0]
    }
