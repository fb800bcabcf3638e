"""Index S3 to S3 behind an S3 that fails a share of its requests, and count what was lost.

    python -m bench.faulty_s3 --rate 0.2 --seeds 1 2 3 --images 120
    python -m bench.faulty_s3 --checkout /tmp/old-actindex   # another checkout's code, for a comparison

A moto S3 server on 127.0.0.1 with the fault-injecting proxy of tests/s3faults.py in front of it (503
SlowDown, 500 InternalError, bodies cut short, replies dropped after the store applied the request). For
each seed the job (the planted net of the tests at 64 px, --executor local) runs as `python -m actindex
index` in the checkout's root; the table says how it ended, how many images became error rows, and what
run.json counts (retried requests, failed shard attempts) where the checkout records them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WIDTHS = (4, 4, 10, 8, 15, 6, 6)
ARGS = [
    "--model", "python:tests.conftest:PlantedNet", "--layers", "relu1,relu2", "--k", "3", "--trust-code",
    "--resize", "64", "--crop", "64", "--interpolation", "nearest", "--mean", "0,0,0", "--std", "1,1,1",
    "--no-progress", "--shard-size", "16", "--batch-size", "8", "--executor", "local",
]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faulty_s3", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=0.2, help="share of requests that fail")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--checkout", type=Path, default=REPO, help="the actindex checkout whose code runs")
    args = parser.parse_args(argv)

    import s3fs
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(REPO))
    from tests.s3faults import FaultyS3

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    upstream = "http://{}:{}".format(*server.get_host_and_port())
    store = s3fs.S3FileSystem(endpoint_url=upstream)
    store.mkdir("data")
    for i in range(args.images):
        pixels = (np.random.default_rng(i).random((48, 64, 3)) * 255).astype(np.uint8)
        data = io.BytesIO()
        Image.fromarray(pixels).save(data, "JPEG")
        store.pipe_file(f"data/photos/c{i % 3}/img{i:03d}.jpg", data.getvalue())
    print(f"checkout {args.checkout}, {args.images} images, {args.rate:.0%} of requests failing")
    head = ("seed", "exit", "error rows", "retried", "failed attempts", "faults", "s")
    print(*(f"{name:>{width}}" for name, width in zip(head, WIDTHS, strict=True)))
    for seed in args.seeds:
        with FaultyS3(upstream, rate=args.rate, seed=seed) as proxy:
            out = f"s3://data/idx-{seed}-{time.time_ns()}/"
            env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "PYTHONPATH": str(REPO)}
            started = time.perf_counter()
            command = [sys.executable, "-m", "actindex", "index", "s3://data/photos/", "--out", out, *ARGS]
            done = subprocess.run(command, capture_output=True, text=True, cwd=args.checkout, env=env)
            seconds = time.perf_counter() - started
            proxy.set_rate(0.0)
            faults = sum(proxy.counts.values())
        manifest = json.loads(store.cat_file(f"{out[5:]}run.json")) if done.returncode == 0 else {}
        errors = manifest.get("failed", "-")
        row = (seed, done.returncode, errors, manifest.get("retried_requests", "-"))
        row += (manifest.get("failed_shard_attempts", "-"), faults, f"{seconds:.1f}")
        print(*(f"{value:>{width}}" for value, width in zip(row, WIDTHS, strict=True)))
        if done.returncode not in (0, 2):
            print(done.stderr[-2000:])
    server.stop()


if __name__ == "__main__":
    main()
