"""Listing benchmark: the driver's peak memory for listing N synthetic Parquet rows (img2dataset layout).

    python -m bench.listing --rows 1000000 --dir /tmp/listing-bench

Writes N rows (key, a 64-byte jpg value, caption) in files of 100,000 rows, then lists them in a fresh
process three ways: streamed (`iter_images`, one ImageRef at a time: what the listers hold), collected
(`list_images`, the whole sorted list in memory) and driver (what `actindex index` does: a
pipeline.listing.Listing, sorted runs spilled to disk, then every shard of 1,024 planned from it, one at a
time). Prints each one's peak RSS (ru_maxrss) and time; the figures are measured here, never asserted in
tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROWS_PER_FILE = 100_000


def write_rows(folder: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        count = min(ROWS_PER_FILE, rows - start)
        keys = [f"{start + i:012d}" for i in range(count)]
        table = pa.table(
            {
                "key": keys,
                "jpg": pa.array([b"\xff\xd8\xff" + b"\0" * 61] * count, pa.binary()),
                "caption": [f"caption {k}" for k in keys],
            }
        )
        pq.write_table(table, folder / f"{n:05d}.parquet", row_group_size=10_000)


def measure(source: str, mode: str) -> dict:
    """Peak RSS and time of listing `source` in a fresh process."""
    code = (
        "import json, resource, time\n"
        "from actindex.pipeline.listing import Listing, list_images\n"
        "from actindex.pipeline.shards import iter_shards\n"
        "from actindex.pipeline.sources import iter_images\n"
        "t = time.perf_counter()\n"
        f"source, mode = {source!r}, {mode!r}\n"
        "if mode == 'streamed':\n"
        "    n = sum(1 for _ in iter_images(source))\n"
        "elif mode == 'collected':\n"
        "    n = len(list_images(source))\n"
        "else:\n"
        "    with Listing.build(source) as listing:\n"
        "        n = sum(len(shard.refs) for shard in iter_shards(listing, 1024))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(json.dumps({'images': n, 'seconds': time.perf_counter() - t, 'peak_rss': peak}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("listing-bench"))
    args = parser.parse_args()
    started = time.perf_counter()
    write_rows(args.dir, args.rows)
    print(f"wrote {args.rows:,} rows in {time.perf_counter() - started:.1f} s to {args.dir}")
    source = str(args.dir / "*.parquet")
    print(f"{'listing':<10} {'images':>10} {'seconds':>8} {'peak RSS':>10}")
    for mode in ("streamed", "driver", "collected"):
        result = measure(source, mode)
        peak = result["peak_rss"] / 2**20
        print(f"{mode:<10} {result['images']:>10,} {result['seconds']:>8.1f} {peak:>7.0f} MiB")


if __name__ == "__main__":
    main()
