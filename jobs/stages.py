"""What a worker needs to build the pipeline's stages, in a picklable form.

spec = StageSpec(model="resnet18", weights=None, layers=("layer4",), preprocessing=prep, device="auto")
batch = spec.decoder().decode_batch({"uri": np.array(["a.jpg"])})
out = record_batch(spec.recorder(), batch)
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def decoder(self) -> Decoder:
        return Decoder(self.preprocessing, self.max_pixels)

    def recorder(self) -> ActivationRecorder:
        from pipeline.models import load_model

        loaded = load_model(self.model, self.weights, trust_code=self.trust_code)
        return ActivationRecorder(loaded.module, self.layers, self.preprocessing, self.resolved_device())


class RecordStage:
    """Callable-class form of the model stage (one per Ray actor): decoded batch -> reductions."""

    def __init__(self, spec: StageSpec, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.recorder = spec.recorder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return record_batch(self.recorder, batch)
