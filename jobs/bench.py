"""`actindex bench`: measure each stage and the whole job on this machine, in one run; print a table.

    results = run_bench(BenchConfig(model="resnet50", layers=("relu", "layer*"), images=128, out="bench/"))

Stages: decode + preprocess alone (all CPU cores, one process per core), forward + reductions alone on
synthetic tensors, the whole index job end to end (files to Parquet) on Ray and as a plain loop, peak memory
of each end-to-end run, and the on-disk size per activation row and per column. `--query` adds the query
benchmark (jobs.query_bench). Numbers are only comparable within one run: machines are noisy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.synthetic import synthetic_jpeg


@dataclass
class BenchConfig:
    out: str  # working directory: dataset, indexes, results.json
    model: str = "resnet50"  # as for `actindex index`
    layers: tuple[str, ...] = ("relu", "layer*")  # as for `actindex index`
    images: int = 128  # synthetic images to generate (ignored with source)
    source: str | None = None  # an image folder to use instead of synthetic JPEGs
    batch_size: int = 32  # images per forward pass
    executors: tuple[str, ...] = ("ray", "local")  # end-to-end runs to measure
    scaling: bool = False  # also run the plain loop on 4x the images and compare peak memory
    extra_args: tuple[str, ...] = ()  # more `actindex index` options (e.g. --resize/--crop)
    results: dict = field(default_factory=dict)


def make_dataset(folder: Path, count: int, first: int = 0) -> Path:
    """`count` synthetic ImageNet-like JPEGs (500x375, quality 90); existing ones are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first, first + count):
        path = folder / f"synthetic_{seed:06d}.jpg"
        if not path.exists():
            path.write_bytes(synthetic_jpeg(seed))
    return folder


def _decode_files(args: tuple[list[str], dict]) -> int:
    from pipeline.decode import Decoder
    from pipeline.preprocess import Preprocessing

    files, prep = args
    decoder = Decoder(Preprocessing.from_dict(prep))
    return sum(decoder(f).error is None for f in files)


def bench_decode(files: list[str], prep, processes: int) -> float:
    """Images/s decoding + resizing + cropping `files` with one process per core."""
    chunks = [(files[i::processes], prep.to_dict()) for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_decode_files, [(c[0][:2], c[1]) for c in chunks]))  # warm the workers
        start = time.perf_counter()
        decoded = sum(pool.map(_decode_files, chunks))
    return decoded / (time.perf_counter() - start)


def bench_device_decode(files: list[str], prep, batch_size: int) -> tuple[str, float]:
    """(device, images/s) decoding + resizing + cropping with torchvision.io on the model's device (nvjpeg on
    a GPU), the job's GPU path; file bytes are read beforehand."""
    import torch

    from pipeline.gpu import GpuDecoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    decoder = GpuDecoder(prep, device)
    blobs = [Path(f).read_bytes() for f in files]
    decoder(blobs[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(blobs), batch_size):
        decoder(blobs[i : i + batch_size]).pixels.sum().item()  # .item() waits for the device
    return device, len(blobs) / (time.perf_counter() - start)


def bench_forward(
    model: str, layers: list[str], prep, batch_size: int, batches: int = 4
) -> tuple[float, float]:
    """(images/s, peak GPU memory in MiB or 0) for normalize + forward + per-unit max/argmax on random uint8
    batches (no decoding), with the recorder the job would use (bf16 GpuRecorder on a GPU)."""
    import torch

    from jobs.stages import StageSpec

    recorder = StageSpec(model, None, tuple(layers), prep).recorder()
    pixels = torch.randint(0, 256, (batch_size, 3, prep.crop, prep.crop), dtype=torch.uint8)
    recorder(pixels)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        recorder(pixels)
    rate = batches * batch_size / (time.perf_counter() - start)
    return rate, torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def run_job(source: str, out: Path, config: BenchConfig, executor: str) -> dict:
    """Run `actindex index` in a fresh process; returns its wall time, images/s and peak RSS (driver)."""
    command = [sys.executable, "-m", "jobs.bench_child", source, "--out", str(out), "--overwrite"]
    command += ["--model", config.model, "--layers", ",".join(config.layers), "--executor", executor]
    command += ["--batch-size", str(config.batch_size), "--no-progress", *config.extra_args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"index job failed ({executor}):\n{done.stderr[-2000:]}")
    manifest = json.loads((out / "run.json").read_text())
    rss = int(re.search(r"peak_rss_kib=(\d+)", done.stderr).group(1))
    return {
        "images": manifest["new_images"],
        "wall_seconds": seconds,
        "job_seconds": manifest["seconds"],
        "startup_seconds": manifest["startup_seconds"],
        "images_per_second": manifest["new_images"] / manifest["seconds"],
        "steady_images_per_second": manifest["steady_images_per_second"],
        "peak_rss_mib": rss / 1024,
    }


def column_sizes(index_dir: Path) -> dict:
    """Bytes per activation row: total and per column (compressed, as stored), plus the encodings."""
    import pyarrow.parquet as pq

    rows, total, per_column, encodings = 0, 0, Counter(), {}
    for path in sorted((index_dir / "activations").rglob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        rows += meta.num_rows
        total += path.stat().st_size
        for group in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(group).column(c)
                per_column[column.path_in_schema] += column.total_compressed_size
                encodings[column.path_in_schema] = sorted(set(column.encodings))
    return {
        "rows": rows,
        "bytes_per_row": total / max(rows, 1),
        "columns": {name: size / max(rows, 1) for name, size in per_column.items()},
        "encodings": encodings,
    }


def run_bench(config: BenchConfig, echo=print) -> dict:
    from pipeline.layers import resolve_layers
    from pipeline.models import load_model

    out = Path(config.out)
    source = Path(config.source) if config.source else make_dataset(out / "images", config.images)
    files = sorted(str(p) for p in source.rglob("*") if p.is_file())
    loaded = load_model(config.model)
    layers = resolve_layers(loaded.module, config.layers, config.model)
    prep = _preprocessing(loaded.preprocessing, config.extra_args)
    cores = os.cpu_count() or 1
    results = config.results
    results.update(machine=_machine(), model=config.model, layers=layers, images=len(files), cores=cores)
    echo(f"decoding {len(files)} images on {cores} processes ...")
    results["decode_images_per_second"] = bench_decode(files, prep, cores)
    echo("decode on the model's device (torchvision.io) ...")
    results["device_decode"], results["device_decode_images_per_second"] = bench_device_decode(
        files, prep, config.batch_size
    )
    echo("forward + reductions on synthetic tensors ...")
    results["forward_images_per_second"], results["gpu_peak_mib"] = bench_forward(
        config.model, layers, prep, config.batch_size
    )
    for executor in config.executors:
        echo(f"end to end, executor {executor} ...")
        results[f"end_to_end_{executor}"] = run_job(str(source), out / f"index_{executor}", config, executor)
    if config.scaling:
        echo("end to end, plain loop, 4x the images ...")
        bigger = make_dataset(out / "images_4x", 4 * len(files))
        results["end_to_end_local_4x"] = run_job(str(bigger), out / "index_local_4x", config, "local")
    results["size"] = column_sizes(out / f"index_{config.executors[0]}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _preprocessing(prep, extra_args: tuple[str, ...]):
    """The model's preprocessing with --resize/--crop from extra_args applied (what the job will use)."""
    import dataclasses

    args = dict(zip(extra_args[::2], extra_args[1::2], strict=False))
    overrides = {key: int(args[f"--{key}"]) for key in ("resize", "crop") if f"--{key}" in args}
    return dataclasses.replace(prep, **overrides)


def _machine() -> dict:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu}


def table_rows(results: dict) -> list[tuple[str, str]]:
    """(measure, value) rows of the printed table."""
    decode, forward = results["decode_images_per_second"], results["forward_images_per_second"]
    device = results["device_decode_images_per_second"]
    # the job decodes on the GPU when it has one, on CPU workers otherwise
    slower = min(device if results["device_decode"] == "cuda" else decode, forward)
    rows = [
        (f"decode + preprocess ({results['cores']} processes)", f"{decode:,.1f} images/s"),
        (f"decode + preprocess on {results['device_decode']} (torchvision.io)", f"{device:,.1f} images/s"),
        ("forward + reductions (synthetic tensors)", f"{forward:,.1f} images/s"),
    ]
    if results.get("gpu_peak_mib"):
        rows.append(("peak GPU memory (forward)", f"{results['gpu_peak_mib']:,.0f} MiB"))
    labels = {
        "end_to_end_ray": "Ray",
        "end_to_end_local": "plain loop",
        "end_to_end_local_4x": "plain loop, 4x",
    }
    for key, label in labels.items():
        if key in results:
            run = results[key]
            speed, steady = run["images_per_second"], run.get("steady_images_per_second") or 0.0
            rows.append(
                (
                    f"end to end, {label} ({run['images']} images)",
                    f"{speed:,.1f} images/s with start-up, {steady:,.1f} steady "
                    f"({steady / slower:.2f} of the slower stage); "
                    f"driver peak RSS {run['peak_rss_mib']:,.0f} MiB",
                )
            )
    if "end_to_end_ray" in results and "end_to_end_local" in results:
        ray, local = results["end_to_end_ray"], results["end_to_end_local"]
        ratio = ray["images_per_second"] / local["images_per_second"]
        steady = (ray.get("steady_images_per_second") or 0) / (local.get("steady_images_per_second") or 1)
        rows.append(("Ray / plain loop", f"{ratio:.2f}x with start-up, {steady:.2f}x steady"))
    if "end_to_end_local_4x" in results:
        growth = (
            results["end_to_end_local_4x"]["peak_rss_mib"] / results["end_to_end_local"]["peak_rss_mib"] - 1
        )
        rows.append(("peak RSS growth at 4x the images", f"{growth:+.1%}"))
    size = results["size"]
    rows.append(("activations on disk", f"{size['bytes_per_row']:.2f} bytes/row over {size['rows']:,} rows"))
    for name, per_row in size["columns"].items():
        rows.append((f"  {name} ({', '.join(size['encodings'][name])})", f"{per_row:.3f} bytes/row"))
    return rows


def asdict_config(config: BenchConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k != "results"}
