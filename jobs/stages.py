"""What a worker needs to build the pipeline's stages, in a picklable form, and the stages' guards.

spec = StageSpec(model="resnet18", weights=None, layers=("layer4",), preprocessing=prep, device="auto")
batch = spec.decoder().decode_batch({"uri": np.array(["a.jpg"])})
out = RecordStage(spec)(JournaledDecode(spec)(batch))

JournaledDecode survives an image that kills its process; RecordStage splits a batch that runs out of
memory. Both record the image as an error rather than losing the batch or the shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.decode import DEFAULT_MAX_PIXELS, Decoder
from pipeline.preprocess import Preprocessing
from pipeline.recorder import ActivationRecorder, record_batch


@dataclass(frozen=True)
class StageSpec:
    model: str  # as in IndexConfig.model
    weights: str | None  # as in IndexConfig.weights
    layers: tuple[str, ...]  # resolved layer names (no globs)
    preprocessing: Preprocessing  # the job's preprocessing (model's own or overridden)
    device: str = "auto"  # "auto" resolves to cuda where this worker sees a GPU
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoder's size limit
    trust_code: bool = False  # allow TorchScript / python: models (they execute code)
    journal_dir: str | None = None  # where decode journals live (the index's _journal/); None = no journal
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32
    compile: bool = False  # torch.compile the forward + reductions (GPU path)
    device_decode: bool | None = None  # decode JPEGs on the model's device; None = on CUDA only

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def decoder(self) -> Decoder:
        return Decoder(self.preprocessing, self.max_pixels)

    def resolved_precision(self) -> str:
        if self.precision == "auto":
            return "bf16" if self.resolved_device() == "cuda" else "fp32"
        return self.precision

    def decodes_on_device(self) -> bool:
        return self.resolved_device() == "cuda" if self.device_decode is None else self.device_decode

    def recorder(self):
        """ActivationRecorder for exact fp32 on the CPU; the GPU path's GpuRecorder (autocast,
        channels_last, asynchronous copies, optional compile) on CUDA or at lower precision."""
        from pipeline.models import load_model

        loaded = load_model(self.model, self.weights, trust_code=self.trust_code)
        device, precision = self.resolved_device(), self.resolved_precision()
        if device == "cpu" and precision == "fp32" and not self.compile:
            return ActivationRecorder(loaded.module, self.layers, self.preprocessing, device)
        from pipeline.gpu import GpuRecorder

        return GpuRecorder(
            loaded.module, self.layers, self.preprocessing, device, precision=precision, compile=self.compile
        )

    def device_decoder(self):
        from pipeline.gpu import GpuDecoder

        return GpuDecoder(self.preprocessing, self.resolved_device(), self.max_pixels)


log = logging.getLogger("actindex")
CRASH_REASON = "crashed the decoder: the process died while decoding this file"


class RecordStage:
    """Callable-class form of the model stage (one per Ray actor): decoded batch -> reductions.

    A batch that runs out of memory is split in halves until it fits; an image that does not fit alone
    becomes an error row ("out of memory"). Any other exception is retried once (a transient fault costs
    nothing) and raised the second time (a deterministic one fails the job with its own message).
    Splits and retries are logged.
    """

    def __init__(self, spec: StageSpec, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.recorder = spec.recorder()
        self.decoder = spec.device_decoder() if spec.decodes_on_device() else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self.decoder is not None:
            batch = self._decode_on_device(batch)
        try:
            return self._record_or_split(batch)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried once, then raised
            log.warning("model stage failed on a batch (%s: %s); retrying it once", type(exc).__name__, exc)
            return self._record_or_split(batch)

    def _decode_on_device(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bytes read by the decode stage -> pixels on the model's device (non-JPEGs and anything the
        device decoder rejects fall back to the CPU decoder, image by image)."""
        decoded = self.decoder(list(batch["data"]), uris=[str(u) for u in batch["uri"]])
        out = {key: value for key, value in batch.items() if key != "data"}
        out.update(pixels=decoded.pixels, ok=decoded.ok, width=decoded.width, height=decoded.height)
        out["error"] = np.array(decoded.error, dtype=object)
        return out

    def _record_or_split(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        try:
            return record_batch(self.recorder, batch)
        except torch.OutOfMemoryError as exc:
            if self.recorder.device.type == "cuda":
                torch.cuda.empty_cache()
            size = len(batch["image_id"])
            if size == 1:
                return record_batch(self.recorder, _as_errors(batch, f"out of memory: {str(exc)[:200]}"))
            log.warning("out of memory on a batch of %d images; retrying it in halves", size)
            halves = [
                {k: v[: size // 2] for k, v in batch.items()},
                {k: v[size // 2 :] for k, v in batch.items()},
            ]
            return concat_columns([self._record_or_split(half) for half in halves])


class JournaledDecode:
    """Decode stage that survives an image which kills its process (a segfault in a C decoder).

    Each attempt at a batch appends `attempt` to the batch's journal in `spec.journal_dir`, then
    `start ID` before and `end ID` after each image. An image left started-but-not-ended by an attempt
    was being decoded when its process died. That happens once by chance when a job is killed; an image
    that did it in two attempts is the cause: it becomes an error row and the rest of the batch is
    decoded. (Ray retries tasks whose worker died, three times by default; the plain loop is rerun by
    the user.) The journal is removed when the batch is done.
    """

    def __init__(self, spec: StageSpec):
        self.decoder = spec.decoder()
        self.journal_dir = Path(spec.journal_dir) if spec.journal_dir else None
        self.bytes_only = spec.decodes_on_device()  # the model stage decodes on its device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.bytes_only:
            return {**batch, "data": np.array([_read_bytes(str(uri)) for uri in batch["uri"]], dtype=object)}
        if self.journal_dir is None:
            return self.decoder.decode_batch(batch)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        journal = self.journal_dir / f"batch-{int(batch['image_id'][0])}.log"
        crashed = _crashed_ids(journal)
        rows = []
        with open(journal, "a") as entries:
            entries.write("attempt\n")
            for i in range(len(batch["image_id"])):
                one = {key: value[i : i + 1] for key, value in batch.items()}
                image_id = int(one["image_id"][0])
                if image_id in crashed:
                    rows.append(self._error_row(one))
                    continue
                entries.write(f"start {image_id}\n")
                entries.flush()  # in the OS page cache: it outlives the process
                rows.append(self.decoder.decode_batch(one))
                entries.write(f"end {image_id}\n")
        journal.unlink(missing_ok=True)
        return concat_columns(rows)

    def _error_row(self, one: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crop = self.decoder.preprocessing.crop
        return {
            **one,
            "pixels": np.zeros((1, 3, crop, crop), dtype=np.uint8),
            "ok": np.array([False]),
            "width": np.zeros(1, dtype=np.int32),
            "height": np.zeros(1, dtype=np.int32),
            "error": np.array([CRASH_REASON], dtype=object),
        }


def _read_bytes(uri: str) -> bytes:
    """The file's bytes, or b"" when it cannot be read: the device decoder then hands it to the CPU
    decoder, which opens the file itself and names the reason."""
    try:
        return Path(uri).read_bytes()
    except OSError:
        return b""


def _crashed_ids(journal: Path, strikes: int = 2) -> set[int]:
    """Images that were being decoded when `strikes` earlier attempts at this batch died."""
    if not journal.is_file():
        return set()
    deaths: dict[int, int] = {}
    for attempt in journal.read_text().split("attempt\n")[1:]:
        started, ended = set(), set()
        for line in attempt.splitlines():
            kind, _, image_id = line.partition(" ")
            if image_id.isdigit():
                (started if kind == "start" else ended).add(int(image_id))
        for image_id in started - ended:
            deaths[image_id] = deaths.get(image_id, 0) + 1
    crashed = {image_id for image_id, count in deaths.items() if count >= strikes}
    for image_id in crashed:
        log.warning("image %d killed a decode worker; recording it as an error", image_id)
    return crashed


def _as_errors(batch: dict[str, np.ndarray], reason: str) -> dict[str, np.ndarray]:
    n = len(batch["image_id"])
    return {**batch, "ok": np.zeros(n, dtype=bool), "error": np.array([reason] * n, dtype=object)}


def concat_columns(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
