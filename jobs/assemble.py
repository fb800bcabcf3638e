"""Driver side of the job: collect result batches per shard and write each shard once it is complete.

assembler = ShardAssembler(shards, layers, widths, writer, tops)
for batch in executor_batches:
    assembler.add(batch)      # writes shard-NNNNN the moment its last image arrives
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline.shards import Shard
from pipeline.sources import display_path
from pipeline.topk import RunningTopK
from pipeline.writer import ShardWriter, activations_table


class ShardAssembler:
    def __init__(
        self,
        shards: list[Shard],
        layers: list[str],
        widths: dict[str, int],
        writer: ShardWriter,
        tops: dict[str, RunningTopK],
    ):
        self.shards = {shard.index: shard for shard in shards}
        self.layers = layers
        self.widths = widths  # feature-map width per layer: flat position -> (y, x)
        self.writer = writer
        self.tops = tops
        self.parts: dict[int, list[dict]] = defaultdict(list)
        self.seen: dict[int, set] = defaultdict(set)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        shard_ids = np.asarray(batch["shard"])
        for shard in np.unique(shard_ids):
            rows = {key: value[shard_ids == shard] for key, value in batch.items()}
            self._add_rows(int(shard), rows)

    def pending(self) -> list[int]:
        return sorted(self.parts)

    def _add_rows(self, shard: int, rows: dict[str, np.ndarray]) -> None:
        new_ids = set(rows["image_id"].tolist())
        if new_ids & self.seen[shard]:
            raise RuntimeError(f"shard {shard} received an image twice; refusing to write duplicates")
        self.seen[shard] |= new_ids
        self.parts[shard].append(rows)
        if len(self.seen[shard]) == len(self.shards[shard].refs):
            self._finish(shard)

    def _finish(self, shard: int) -> None:
        parts = self.parts.pop(shard)
        rows = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        rank = {ref.image_id: i for i, ref in enumerate(self.shards[shard].refs)}
        order = np.argsort([rank[i] for i in rows["image_id"].tolist()])
        rows = {key: value[order] for key, value in rows.items()}
        ok = rows["ok"].astype(bool)
        ids = rows["image_id"][ok]
        tables = {}
        for i, layer in enumerate(self.layers):
            act, pos = rows[f"act_{i}"][ok], rows[f"pos_{i}"][ok]
            tables[layer] = activations_table(layer, ids, act, pos, self.widths[layer])
            self.tops[layer].add(act, ids, pos)
        self.writer.write_shard(shard, self.shards[shard].digest, images_table(rows), tables)


def images_table(rows: dict[str, np.ndarray]) -> pa.Table:
    ok = rows["ok"].astype(bool)
    # display_path: a file name that is not UTF-8 is stored %-escaped (Parquet strings must be UTF-8)
    labels = [
        None if label is None or label != label else display_path(str(label)) for label in rows["label"]
    ]
    errors = [None if good else str(err) for good, err in zip(ok, rows["error"].tolist(), strict=True)]
    return pa.table(
        {
            "image_id": rows["image_id"].astype(np.int64),
            "uri": [display_path(str(uri)) for uri in rows["uri"]],
            "relpath": [display_path(str(relpath)) for relpath in rows["relpath"]],
            "width": rows["width"].astype(np.int32),
            "height": rows["height"].astype(np.int32),
            "label": labels,
            "status": np.where(ok, "ok", "error"),
            "error": errors,
        },
        schema=schema.IMAGES,
    )
