"""Do decode threads serialize on the GIL? Decode rates with 1 and 2 threads and 1 and 2 processes.

    python -m bench.decode_threads --source JPEGS/ --images 3000 --rounds 3

Three decoders, each turning a file into the model input (uint8, 64 x 64, bilinear):
  pillow loop     Image.open(f).convert("RGB"), torchvision Resize(64) + CenterCrop(64): the plain loop
  Decoder/Pillow  actindex's decoder with --decode torchvision, every file through Pillow (before issue 21)
  Decoder/libjpeg the same with plain JPEGs decoded by torchvision.io.decode_jpeg (pipeline.jpeg.ExactJpeg)

For each: images/s with 1 and 2 threads of one process, and with 1 and 2 processes (the files split between
them), and the CPU seconds the threads used per second of wall time. If the per-image Python work holds
the GIL, 2 threads gain less over 1 than 2 processes over 1 (processes share no GIL). Rounds run interleaved
and the table gives their medians, so that the machine's other load falls on every variant alike. The thread
and process scalings are only comparable on an otherwise idle machine: the table prints the load averages
before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from actindex.pipeline.decode import Decoder
from actindex.pipeline.preprocess import Preprocessing

PREP = Preprocessing(resize=64, crop=64, interpolation="bilinear", decode="torchvision")
DECODERS = ("pillow loop", "Decoder/Pillow", "Decoder/libjpeg")
_decoders: dict = {}


def decode_one(name: str, path: str) -> None:
    """Decode one file with the decoder `name` (made once per process)."""
    if name not in _decoders:
        _decoders[name] = _make(name)
    _decoders[name](path)


def _make(name: str):
    if name == "pillow loop":
        from PIL import Image
        from torchvision import transforms

        resize_crop = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64)])
        return lambda path: np.asarray(resize_crop(Image.open(path).convert("RGB")))
    decoder = Decoder(PREP, exact_jpeg=name == "Decoder/libjpeg")
    return decoder


def _decode_chunk(args: tuple[str, list[str]]) -> int:
    name, files = args
    for path in files:
        decode_one(name, path)
    return len(files)


def with_threads(name: str, files: list[str], threads: int) -> tuple[float, float]:
    """(images/s, CPU seconds per wall second) decoding `files` in `threads` threads of this process."""
    decode_one(name, files[0])  # the decoder made, outside the clock
    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda path: decode_one(name, path), files))
    seconds = time.perf_counter() - wall
    return len(files) / seconds, (time.process_time() - cpu) / seconds


def with_processes(name: str, files: list[str], pool: ProcessPoolExecutor, processes: int) -> float:
    """Images/s decoding `files` split between `processes` processes (already started and warm)."""
    list(pool.map(_decode_chunk, [(name, files[:2])] * processes))
    wall = time.perf_counter()
    sum(pool.map(_decode_chunk, [(name, files[i::processes]) for i in range(processes)]))
    return len(files) / (time.perf_counter() - wall)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decode_threads", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--source", required=True, help="a folder of JPEGs")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    files = sorted(str(p) for p in Path(args.source).rglob("*.jp*g"))[: args.images]
    pools = {n: ProcessPoolExecutor(n) for n in (1, 2)}
    rates: dict = {}
    print(f"{len(files)} files; load averages before: {_load()}")
    for _ in range(args.rounds):
        for name in DECODERS:
            for kind, n in (("thread", 1), ("thread", 2), ("process", 1), ("process", 2)):
                if kind == "thread":
                    rate, cores = with_threads(name, files, n)
                else:
                    rate, cores = with_processes(name, files, pools[n], n), None
                rates.setdefault((name, kind, n), []).append((rate, cores))
    print(f"load averages after: {_load()}")
    print("| decoder | 1 thread | 2 threads | 1 process | 2 processes | 2/1 threads | 2/1 processes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in DECODERS:
        med = {key[1:]: statistics.median(r for r, _ in v) for key, v in rates.items() if key[0] == name}
        cores = statistics.median(c for _, c in rates[(name, "thread", 2)])
        threads, processes = (
            med[("thread", 2)] / med[("thread", 1)],
            med[("process", 2)] / med[("process", 1)],
        )
        print(
            f"| {name} | {med[('thread', 1)]:,.0f} | {med[('thread', 2)]:,.0f} ({cores:.2f} cores) | "
            f"{med[('process', 1)]:,.0f} | {med[('process', 2)]:,.0f} | "
            f"{threads:.2f} | {processes:.2f} |"
        )
    for pool in pools.values():
        pool.shutdown()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
