"""How long `actindex index` takes to answer a mistake: a typo'd model or layer, and DEFAULT weights that
cannot be had (offline), refused in the driver before the images are listed or Ray starts.

    python -m bench.name_checks                 # each case 3 times, the median and the fastest
    python -m bench.name_checks --repeat 5

Each case is a fresh `python -m actindex index PHOTOS ... --out OUT` process timed from start to exit, with
empty torch and Hugging Face caches and a proxy on a closed port (no download can succeed). The model is
built on the meta device (pipeline.models.model_skeleton); most of the time is importing torch, which the
first line measures alone. Prints a table; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [  # (what, --model, --layers)
    ("torchvision: unknown layer", "resnet50", "layer5"),
    ("torchvision: unknown model", "resnet5", "layer4"),
    ("torchvision: DEFAULT offline", "resnet50", "layer4"),
    ("timm: unknown layer", "timm:convnext_tiny", "stage"),
    ("timm: unknown model", "timm:convnext_tinyy", "stages"),
    ("timm: DEFAULT offline", "timm:convnext_tiny", "stages.3"),
    ("built-in: unknown layer", "efficientnet_lite0", "block"),
    ("built-in: unknown model", "efficientnet_lite", "blocks"),
]


def timed(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.name_checks", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # held, never listening: every connection to it is refused
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = {**os.environ, "TORCH_HOME": f"{folder}/torch", "HF_HOME": f"{folder}/hf"}
        env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy)
        photos = Path(folder) / "photos"
        photos.mkdir()
        (photos / "a.jpg").write_bytes(b"never read")
        rows = [("import torch (alone)", [sys.executable, "-c", "import torch"], None)]
        for what, model, layers in CASES:
            command = [sys.executable, "-m", "actindex", "index", str(photos), "--model", model]
            rows.append((what, command + ["--layers", layers, "--out", f"{folder}/out"], model))
        print(f"{'case':32} {'median s':>9} {'best s':>7}  answer")
        for what, command, model in rows:
            times, answer = [], ""
            for _ in range(args.repeat):
                seconds, done = timed(command, env)
                times.append(seconds)
                answer = (done.stderr.strip().splitlines() or [""])[-1]
            if model is not None and not answer.startswith("Error:"):
                answer = f"(not refused: exit {done.returncode}) {answer}"
            print(f"{what:32} {statistics.median(times):9.2f} {min(times):7.2f}  {answer[:90]}")


if __name__ == "__main__":
    main()
