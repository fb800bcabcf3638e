"""The baseline `actindex bench` measures the job against: a plain single-process loop doing the same
work, one step after the other, with no Ray, no threads and no overlap.

    python -m actindex.jobs.plain_loop PHOTOS/ --out plain/ --model resnet18 --layers layer3,layer4

Decode + resize + crop (pipeline.decode.Decoder), forward with hooks, per-unit max and argmax
(pipeline.recorder.ActivationRecorder), then one long-format Parquet file per 1,024 images
(image_id, layer, unit, act, y, x; zstd). It prints `images=N seconds=S` and, like jobs.measured,
`actindex-process peak_rss_kib=... cpu_seconds=...` on stderr.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from actindex.jobs.indexing import own_cpu_seconds
from actindex.pipeline.decode import Decoder
from actindex.pipeline.layers import describe_layers, resolve_layers
from actindex.pipeline.listing import list_images
from actindex.pipeline.models import load_model
from actindex.pipeline.options import comma_list
from actindex.pipeline.preprocess import DECODES
from actindex.pipeline.recorder import ActivationRecorder

SHARD = 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m actindex.jobs.plain_loop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("source")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default=None, help="As `actindex index --weights`.")
    parser.add_argument("--layers", default="relu,layer*")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resize", type=int, default=None)
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--decode", choices=DECODES, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    images = run(args)
    print(f"images={images} seconds={time.perf_counter() - started:.3f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"actindex-process peak_rss_kib={rss} cpu_seconds={own_cpu_seconds():.2f}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    refs = list_images(args.source)
    loaded = load_model(args.model, args.weights)
    overrides = {key: getattr(args, key) for key in ("resize", "crop", "decode") if getattr(args, key)}
    prep = dataclasses.replace(loaded.preprocessing, **overrides)
    layers = resolve_layers(loaded.module, list(comma_list(args.layers)), args.model)
    recorder = ActivationRecorder(loaded.module, layers, prep)
    decoder = Decoder(prep)
    widths = {
        name: info.width for name, info in describe_layers(loaded.module, layers, (prep.crop,) * 2).items()
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(refs), SHARD)):
        tables = []
        for first in range(start, min(start + SHARD, len(refs)), args.batch_size):
            batch = refs[first : min(first + args.batch_size, start + SHARD)]
            decoded = [decoder(ref.uri) for ref in batch]
            good = [(ref, d) for ref, d in zip(batch, decoded, strict=True) if d.error is None]
            if not good:
                continue
            ids = np.array([ref.image_id for ref, _ in good], dtype=np.int64)
            results = recorder(np.stack([d.pixels for _, d in good]))
            for name, (act, pos) in results.items():
                units = act.shape[1]
                tables.append(
                    pa.table(
                        {
                            "image_id": np.repeat(ids, units),
                            "layer": pa.repeat(pa.scalar(name), act.size),
                            "unit": np.tile(np.arange(units, dtype=np.int32), len(ids)),
                            "act": act.ravel(),
                            "y": (pos.ravel() // widths[name]).astype(np.int16),
                            "x": (pos.ravel() % widths[name]).astype(np.int16),
                        }
                    )
                )
        if tables:
            pq.write_table(pa.concat_tables(tables), out / f"shard-{shard:05d}.parquet", compression="zstd")
    return len(refs)


if __name__ == "__main__":
    main()
