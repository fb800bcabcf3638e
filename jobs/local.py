"""Plain single-process executor: the same stages as the Ray job, in one loop, no Ray needed.

    for out in run_local(shard_batches(shards, 32), spec):
        ...   # dicts with the columns record_batch produces

Used by `actindex index --executor local`, by GPU machines without Ray, and as the baseline Ray is
measured against.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jobs.stages import JournaledDecode, RecordStage, StageSpec


def columns(items: list[dict]) -> dict[str, np.ndarray]:
    """Row dicts -> a column batch (object arrays for strings and nullable labels)."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = np.array(values, dtype=object if isinstance(values[0], str) or key == "label" else None)
    return out


def run_local(batches: list[list[dict]], spec: StageSpec) -> Iterator[dict[str, np.ndarray]]:
    decode = JournaledDecode(spec)
    record = RecordStage(spec)
    for items in batches:
        yield record(decode(columns(items)))
