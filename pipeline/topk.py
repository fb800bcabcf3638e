"""Running per-unit top-k over batches of images, mergeable across workers and shards.

    top = RunningTopK(units=512, k=100)
    top.add(act, image_ids, pos)     # act (B, U) float32, image_ids (B,), pos (B, U) int32
    top.merge(other)                 # partial results from another shard combine exactly
    values, ids, positions = top.values, top.image_ids, top.positions   # (U, <=k) each, best first

Order is act descending, then image_id ascending, so ties resolve the same way on every run; NaN sorts last.
"""

from __future__ import annotations

import numpy as np


class RunningTopK:
    def __init__(self, units: int, k: int):
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        self.k = k
        self.values = np.empty((units, 0), dtype=np.float32)
        self.image_ids = np.empty((units, 0), dtype=np.int64)
        self.positions = np.empty((units, 0), dtype=np.int32)

    def add(self, act: np.ndarray, image_ids: np.ndarray, positions: np.ndarray) -> None:
        """Fold in one batch: act and positions are (B, U), image_ids (B,)."""
        ids = np.broadcast_to(np.asarray(image_ids, dtype=np.int64)[:, None], act.shape)
        self._fold(act.T, ids.T, positions.T)

    def merge(self, other: RunningTopK) -> None:
        self._fold(other.values, other.image_ids, other.positions)

    def _fold(self, values: np.ndarray, ids: np.ndarray, positions: np.ndarray) -> None:
        values = np.concatenate([self.values, values.astype(np.float32, copy=False)], axis=1)
        ids = np.concatenate([self.image_ids, ids.astype(np.int64, copy=False)], axis=1)
        positions = np.concatenate([self.positions, positions.astype(np.int32, copy=False)], axis=1)
        # lexsort's last key is primary: -act (NaN stays last), then image_id.
        order = np.lexsort((ids, -values), axis=1)[:, : self.k]
        self.values = np.take_along_axis(values, order, axis=1)
        self.image_ids = np.take_along_axis(ids, order, axis=1)
        self.positions = np.take_along_axis(positions, order, axis=1)
