"""`actindex bench`: measure each stage and the whole job on this machine, in one run; print a table.

    results = run_bench(BenchConfig(model="resnet50", layers=("relu", "layer*"), images=128, out="bench/"))

Stages: decode + preprocess alone (one process per core, and on the model's device), forward +
reductions alone on synthetic tensors, and finishing shards (ordering every unit, encoding the Parquet
files, the shard's top-k; as rows per second per core and with 1, 2 and 4 finishers in parallel). End to
end, as whole processes timed from start to exit: the job on Ray and with --executor local, and a plain
single-process loop doing the same work (jobs.plain_loop); each with the index process's own CPU
seconds and peak RSS. `driver_cpu` also runs the Ray job on 4x the images: the extra CPU seconds the
driver spends per 1,000 images. `--query` adds the query benchmark (jobs.query_bench). Numbers
are only comparable within one run: machines are noisy.

`--host` measures the host's ceiling instead, for sizing a machine (run_host_bench): the whole job with a
model that costs almost nothing (the built-in tiny_conv at 64 px), so that what remains is actindex's own
pipeline, against N x the rate of the same decoder on the same files on one core (N: the cores), for the
local and the Ray executor. A job's rate counts from its first batch out of the model to its last shard
written (run.json's stages), so start-up is left out; the table gives each stage's rate and split too, and
the absolute rate against a plain single-core Pillow loop (open, convert("RGB"), torchvision Resize +
CenterCrop), since the decoder itself may change.

    results = run_host_bench(BenchConfig(host=True, source="jpegs/", extra_args=("--decode", "torchvision")))
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from actindex.jobs.query_bench import synthetic_shard
from actindex.jobs.spec import IndexRequest, available_cores, resolve_spec
from actindex.jobs.worker import ShardFinisher, WorkContext, make_recorder, plan_model
from actindex.pipeline.decode import Decoder
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.gpu import GpuDecoder
from actindex.pipeline.model_args import MODEL, TINY_CONV, WEIGHTS
from actindex.pipeline.models import TINY, load_model
from actindex.pipeline.options import Option, check, comma_list
from actindex.pipeline.patterns import LAYERS
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.synthetic import synthetic_jpeg

LABELS = {"ray": "Ray", "local": "--executor local", "plain": "plain loop"}


BATCH, HOST_BATCH = 32, 256  # --batch-size's defaults: the stages and jobs; --host (a GPU job's batch)
EXECUTORS = ("ray", "local", "plain")  # end-to-end runs; "plain" is the baseline loop (jobs.plain_loop)


def batch_size(config: BenchConfig) -> int:
    """The benchmark's images per forward pass: --batch-size, else BATCH."""
    return config.batch_size or BATCH


def executor_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """'ray,plain' (or a sequence) -> ("ray", "plain"); a run that is not one of EXECUTORS is refused."""
    runs = comma_list(value)
    unknown = [run for run in runs if run not in EXECUTORS]
    if unknown:
        raise InvalidInputError(f"{', '.join(unknown)}: choose from {', '.join(EXECUTORS)}")
    return runs


@dataclass
class BenchConfig:
    """What `actindex bench` measures: its options (pipeline.options)."""

    out: str = Option(  # dataset, indexes, results.json
        "Working directory (dataset, indexes, results).", flags=("--out", "-o")
    ).field("actindex-bench")
    model: str = MODEL.field("resnet50")
    weights: str | None = WEIGHTS.field(None)  # speed does not depend on them; the model's preprocessing does
    layers: tuple[str, ...] = LAYERS.field(("relu", "layer*"))
    images: int = Option("Synthetic 500x375 JPEGs to generate.", min=1).field(128)  # ignored with source
    source: str | None = Option("Use this image folder instead of synthetic JPEGs.").field(None)
    batch_size: int | None = Option(  # None: BATCH, or HOST_BATCH with --host
        "Images per forward pass [default: 32; with --host 256, a GPU job's, whose host --host sizes].", min=1
    ).field(None)
    scaling: bool = Option("Also index 4x the images and compare peak memory.").field(False)
    driver_cpu: bool = Option(
        "Also run the Ray job on 4x the images: driver CPU per 1,000 extra images."
    ).field(False)
    executors: tuple[str, ...] = Option(
        "End-to-end runs, comma-separated: ray, local, plain (the baseline loop).", parse=executor_list
    ).field(EXECUTORS)
    finish_shard: int = Option(
        "Images per shard in the finish-shards benchmark (0 skips it).",
        min=0,
    ).field(1024)
    host: bool = Option(
        "Measure the host's ceiling instead: the whole job with tiny_conv (a near-free model, 64 px) against "
        "N cores x the one-core rate of the same decoder on the same files, with --executors ray, local."
    ).field(False)
    extra_args: tuple[str, ...] = ()  # more `actindex index` options (e.g. --resize/--crop/--decode)
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self)


def parse_report(stderr: str) -> dict:
    """{"peak_rss_mib", "cpu_seconds"} from a child's stderr."""
    match = re.findall(r"actindex-process peak_rss_kib=(\d+) cpu_seconds=([0-9.]+)", stderr)
    if not match:
        raise RuntimeError(f"the index process printed no report:\n{stderr[-2000:]}")
    rss, cpu = match[-1]
    return {"peak_rss_mib": int(rss) / 1024, "cpu_seconds": float(cpu)}


def make_dataset(folder: Path, count: int, first: int = 0) -> Path:
    """`count` synthetic ImageNet-like JPEGs (500x375, quality 90); existing ones are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first, first + count):
        path = folder / f"synthetic_{seed:06d}.jpg"
        if not path.exists():
            path.write_bytes(synthetic_jpeg(seed))
    return folder


def _decode_files(args: tuple[list[str], dict]) -> int:
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

    device = "cuda" if torch.cuda.is_available() else "cpu"
    decoder = GpuDecoder(prep, device)
    blobs = [Path(f).read_bytes() for f in files]
    decoder(blobs[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(blobs), batch_size):
        decoder(blobs[i : i + batch_size]).pixels.sum().item()  # .item() waits for the device
    return device, len(blobs) / (time.perf_counter() - start)


def bench_forward(spec, module, batch_size: int, batches: int = 4) -> tuple[float, float]:
    """(images/s, peak GPU memory in MiB or 0) for normalize + forward + per-unit max/argmax on random uint8
    batches (no decoding), with the recorder the job's workers use (bf16 GpuRecorder on a GPU)."""
    import torch

    recorder = make_recorder(module, spec)
    crop = spec.preprocessing.crop
    pixels = torch.randint(0, 256, (batch_size, 3, crop, crop), dtype=torch.uint8).to(recorder.device)
    recorder.submit(pixels).result()  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        recorder.submit(pixels).result()
    rate = batches * batch_size / (time.perf_counter() - start)
    return rate, torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def bench_finish(spec, infos: dict, rfs: dict, images: int, folder: Path, parallel=(1, 2, 4)) -> dict:
    """Finishing shards of `images` images with the job's own ShardFinisher (order, encode, top-k, write):
    activation rows per CPU-second of one finisher, and rows per second with 1, 2, 4 finishers at once."""
    import numpy as np

    context = WorkContext(spec, str(folder), infos, rfs, metadata=spec.params())
    finisher = ShardFinisher(context)
    rng = np.random.default_rng(0)
    shards = []
    for shard in range(max(parallel)):
        task, meta, _ = synthetic_shard(rng, shard, np.arange(images, dtype=np.int64) * 7919 + shard)
        layers = {
            layer: _synthetic_maxima(rng, images, info.channels, info.height * info.width)
            for layer, info in infos.items()
        }
        shards.append((task, meta, layers))
    rows = images * sum(info.channels for info in infos.values())
    finisher(*shards[0])  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    finisher(*shards[0])
    out = {"rows_per_shard": rows, "rows_per_cpu_second": rows / (time.process_time() - cpu)}
    out["rows_per_second_1"] = rows / (time.perf_counter() - wall)
    for count in parallel[1:]:
        with ThreadPoolExecutor(count) as pool:
            wall = time.perf_counter()
            list(pool.map(lambda s: finisher(*s), shards[:count]))
            out[f"rows_per_second_{count}"] = count * rows / (time.perf_counter() - wall)
    return out


def _synthetic_maxima(rng, images: int, units: int, positions: int):
    import numpy as np

    act = (rng.gamma(2.0, 1.0, (images, units)) * rng.uniform(0.5, 4.0, units)).astype(np.float32)
    return act, rng.integers(0, max(positions, 1), (images, units), dtype=np.int32)


def run_job(source: str, out: Path, config: BenchConfig, executor: str) -> dict:
    """Run the index job (or the plain loop) as a whole process; its wall time from start to exit, images/s,
    and the process's own CPU seconds and peak RSS. `out` is emptied first: every run indexes every image."""
    shutil.rmtree(out, ignore_errors=True)
    weights = ["--weights", config.weights] if config.weights else []
    if executor == "plain":
        command = [sys.executable, "-m", "actindex.jobs.plain_loop", source, "--out", str(out)]
        command += ["--model", config.model, "--layers", ",".join(config.layers)]
        command += ["--batch-size", str(batch_size(config)), *weights, *config.extra_args]
    else:
        command = [sys.executable, "-m", "actindex.jobs.measured", source, "--out", str(out)]
        command += ["--model", config.model, "--layers", ",".join(config.layers), "--executor", executor]
        command += ["--batch-size", str(batch_size(config)), "--no-progress", *weights, *config.extra_args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"index job failed ({executor}):\n{done.stderr[-2000:]}")
    report = parse_report(done.stderr)
    stages = None
    if executor == "plain":
        images = int(done.stdout.split("images=")[1].split()[0])
        steady = None
    else:
        manifest = json.loads((out / "run.json").read_text())
        images, steady, stages = (
            manifest["new_images"],
            manifest["steady_images_per_second"],
            manifest["stages"],
        )
    return {
        "images": images,
        "wall_seconds": seconds,
        "images_per_second": images / seconds,
        "steady_images_per_second": steady,
        "stages": stages,
        **report,
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
    import torch

    out = Path(config.out)
    source = Path(config.source) if config.source else make_dataset(out / "images", config.images)
    files = sorted(str(p) for p in source.rglob("*") if p.is_file())
    request = bench_request(config, str(source))
    plan, module = plan_model(request, geometry=bool(config.finish_shard))
    spec = resolve_spec(request, plan, str(source), gpus=torch.cuda.is_available())
    layers = list(plan.layers)
    cores = os.cpu_count() or 1
    results = config.results
    results.update(machine=_machine(), model=config.model, layers=layers, images=len(files), cores=cores)
    echo(f"decoding {len(files)} images on {cores} processes ...")
    results["decode_images_per_second"] = bench_decode(files, spec.preprocessing, cores)
    if spec.preprocessing.decode == "fast":  # "torchvision" pixels come from Pillow only (GpuDecoder refuses)
        echo("decode on the model's device (torchvision.io) ...")
        results["device_decode"], results["device_decode_images_per_second"] = bench_device_decode(
            files, spec.preprocessing, batch_size(config)
        )
    echo("forward + reductions on synthetic tensors ...")
    results["forward_images_per_second"], results["gpu_peak_mib"] = bench_forward(
        spec, module, batch_size(config)
    )
    if config.finish_shard:
        echo(f"finishing shards of {config.finish_shard} images (order, encode, top-k) ...")
        results["finish"] = bench_finish(spec, plan.infos, plan.rfs, config.finish_shard, out / "finish")
    for executor in config.executors:
        echo(f"end to end, {LABELS[executor]} ...")
        results[f"end_to_end_{executor}"] = run_job(str(source), out / f"index_{executor}", config, executor)
    if config.driver_cpu:
        echo("end to end on Ray, 4x the images (driver CPU) ...")
        bigger = make_dataset(out / "images_4x", 4 * len(files))
        results["end_to_end_ray_4x"] = run_job(str(bigger), out / "index_ray_4x", config, "ray")
    if config.scaling:
        echo("end to end, --executor local, 4x the images ...")
        bigger = make_dataset(out / "images_4x", 4 * len(files))
        results["end_to_end_local_4x"] = run_job(str(bigger), out / "index_local_4x", config, "local")
    indexed = next((out / f"index_{e}" for e in config.executors if e != "plain"), None)
    if indexed is not None:
        results["size"] = column_sizes(indexed)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def bench_request(config: BenchConfig, source: str):
    """The IndexRequest the benchmark's runs make: the model's preprocessing, --resize/--crop/--decode
    applied."""

    overrides = _overrides(config.extra_args)
    model = load_model(config.model, config.weights) if overrides else None
    prep = _preprocessing(model.preprocessing, overrides) if model else None
    return IndexRequest(
        source=source, out=config.out, layers=config.layers, model=config.model, weights=config.weights,
        batch_size=batch_size(config), preprocessing=prep,
    )  # fmt: skip


def _overrides(extra_args: tuple[str, ...]) -> dict:
    """--resize/--crop/--decode from extra_args (what the job will use instead of the model's)."""
    args = dict(zip(extra_args[::2], extra_args[1::2], strict=False))
    overrides: dict = {key: int(args[f"--{key}"]) for key in ("resize", "crop") if f"--{key}" in args}
    if "--decode" in args:
        overrides["decode"] = args["--decode"]
    return overrides


def _preprocessing(prep, overrides: dict):
    return dataclasses.replace(prep, **overrides)


def _machine() -> dict:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu}


def table_rows(results: dict) -> list[tuple[str, str]]:
    """(measure, value) rows of the printed table."""
    decode, forward = results["decode_images_per_second"], results["forward_images_per_second"]
    rows = [(f"decode + preprocess ({results['cores']} processes)", f"{decode:,.1f} images/s")]
    if "device_decode" in results:
        device = results["device_decode_images_per_second"]
        rows.append(
            (f"decode + preprocess on {results['device_decode']} (torchvision.io)", f"{device:,.1f} images/s")
        )
    rows.append(("forward + reductions (synthetic tensors)", f"{forward:,.1f} images/s"))
    if results.get("gpu_peak_mib"):
        rows.append(("peak GPU memory (forward)", f"{results['gpu_peak_mib']:,.0f} MiB"))
    if "finish" in results:
        finish = results["finish"]
        rows.append(
            (
                f"finish shards ({finish['rows_per_shard']:,} rows each: order, encode, top-k)",
                f"{finish['rows_per_cpu_second'] / 1e6:,.2f}M rows/s per core",
            )
        )
        parallel = [key.rsplit("_", 1)[1] for key in finish if key.startswith("rows_per_second_")]
        rates = ", ".join(f"{n}: {finish[f'rows_per_second_{n}'] / 1e6:,.2f}M" for n in parallel)
        rows.append(("  rows/s with 1, 2, 4 finishers in parallel", rates))
    for key, label in [(f"end_to_end_{e}", LABELS[e]) for e in LABELS] + [
        ("end_to_end_ray_4x", "Ray, 4x"),
        ("end_to_end_local_4x", "--executor local, 4x"),
    ]:
        if key in results:
            run = results[key]
            steady = run.get("steady_images_per_second")
            rows.append(
                (
                    f"end to end, {label} ({run['images']} images, whole process)",
                    f"{run['images_per_second']:,.1f} images/s"
                    + f" ({'-' if steady is None else f'{steady:,.1f}'} after start-up)"
                    + f"; process CPU {run['cpu_seconds']:,.1f} s, peak RSS {run['peak_rss_mib']:,.0f} MiB",
                )
            )
    if "end_to_end_ray" in results and "end_to_end_plain" in results:
        ratio = (
            results["end_to_end_ray"]["images_per_second"] / results["end_to_end_plain"]["images_per_second"]
        )
        rows.append(("Ray / plain loop (whole processes)", f"{ratio:.2f}x"))
    if "end_to_end_ray" in results and "end_to_end_ray_4x" in results:
        small, big = results["end_to_end_ray"], results["end_to_end_ray_4x"]
        extra = (big["cpu_seconds"] - small["cpu_seconds"]) / max(big["images"] - small["images"], 1) * 1000
        results["driver_cpu_seconds_per_1000_images"] = extra
        rows.append(("driver CPU per 1,000 extra images (Ray)", f"{extra:.3f} s"))
    if "end_to_end_local_4x" in results and "end_to_end_local" in results:
        growth = (
            results["end_to_end_local_4x"]["peak_rss_mib"] / results["end_to_end_local"]["peak_rss_mib"] - 1
        )
        rows.append(("peak RSS growth at 4x the images", f"{growth:+.1%}"))
    if "size" in results:
        size = results["size"]
        rows.append(
            ("activations on disk", f"{size['bytes_per_row']:.2f} bytes/row over {size['rows']:,} rows")
        )
        for name, per_row in size["columns"].items():
            rows.append((f"  {name} ({', '.join(size['encodings'][name])})", f"{per_row:.3f} bytes/row"))
    return rows


def asdict_config(config: BenchConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k != "results"}


# ---------------------------------------------------------------------------------------------- --host


def run_host_bench(config: BenchConfig, echo=print) -> dict:
    """The host's ceiling (see the module docstring): one-core decode and Pillow-loop rates, then the job
    with tiny_conv on each executor of `config.executors` (but the plain loop), in one run."""
    out = Path(config.out)
    source = Path(config.source) if config.source else make_dataset(out / "images", config.images)
    files = sorted(str(p) for p in source.rglob("*") if p.is_file())
    prep = _preprocessing(TINY, _overrides(config.extra_args))
    cores = available_cores()
    job = dataclasses.replace(
        config, model=TINY_CONV, weights=None, layers=("relu1", "relu2"), host=False, results={},
        batch_size=config.batch_size or HOST_BATCH,
    )  # fmt: skip
    results = config.results
    results.update(machine=_machine(), cores=cores, images=len(files), preprocessing=prep.to_dict())
    results["batch_size"] = job.batch_size
    results["load_average_before"] = list(os.getloadavg())
    echo(f"decoding {len(files)} images on one core ...")
    results["decode_one_core"] = decode_one_core(files, prep)
    echo("the plain Pillow loop on one core ...")
    results["pillow_loop_one_core"] = pillow_loop_one_core(files, prep)
    ceiling = cores * results["decode_one_core"]
    for executor in (e for e in config.executors if e != "plain"):
        echo(f"the job with {TINY_CONV}, {LABELS[executor]} ...")
        run = run_job(str(source), out / f"host_{executor}", job, executor)
        rate = run["stages"]["images_per_second"] if run["stages"] else None
        run["of_ceiling"] = rate / ceiling if rate else None
        run["of_pillow_loop"] = rate / results["pillow_loop_one_core"] if rate else None
        results[f"host_{executor}"] = run
    results["load_average_after"] = list(os.getloadavg())
    (out / "host_results.json").write_text(json.dumps(results, indent=2))
    return results


def decode_one_core(files: list[str], prep: Preprocessing) -> float:
    """Images/s of the job's decoder (pipeline.decode.Decoder, `prep`) over `files` in one thread."""
    decoder = Decoder(prep)
    decoder(files[0])  # made and warm, outside the clock
    start = time.perf_counter()
    for path in files:
        decoder(path)
    return len(files) / (time.perf_counter() - start)


def pillow_loop_one_core(files: list[str], prep: Preprocessing) -> float:
    """Images/s of a plain loop in one thread: Image.open, convert("RGB"), torchvision Resize + CenterCrop."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    resize_crop = transforms.Compose([transforms.Resize(prep.resize), transforms.CenterCrop(prep.crop)])
    start = time.perf_counter()
    for path in files:
        np.asarray(resize_crop(Image.open(path).convert("RGB")))
    return len(files) / (time.perf_counter() - start)


def host_rows(results: dict) -> list[tuple[str, str]]:
    """(measure, value) rows of `bench --host`'s table."""
    cores, decode, pillow = results["cores"], results["decode_one_core"], results["pillow_loop_one_core"]
    prep = results["preprocessing"]
    rows = [
        (
            f"{results['images']:,} images, {TINY_CONV} at {prep['crop']} px, --decode {prep['decode']}, "
            f"batches of {results['batch_size']}",
            f"{cores} cores; load averages {_loads(results['load_average_before'])} before, "
            f"{_loads(results['load_average_after'])} after",
        ),
        ("decode on one core (the job's decoder)", f"{decode:,.0f} images/s"),
        ("plain Pillow loop on one core (open, convert, Resize + CenterCrop)", f"{pillow:,.0f} images/s"),
        (f"ceiling: {cores} x decode on one core", f"{cores * decode:,.0f} images/s"),
    ]
    for executor in ("local", "ray"):
        run = results.get(f"host_{executor}")
        if run is None:
            continue
        stages = run["stages"] or {}
        rate = stages.get("images_per_second")
        rows.append(
            (
                f"{LABELS[executor]}: first batch to last shard written",
                "-"
                if rate is None
                else f"{rate:,.0f} images/s: {run['of_ceiling']:.2f} of the ceiling, "
                f"{run['of_pillow_loop']:.2f}x the Pillow loop",
            )
        )
        if stages:
            rows.append(("  stages (images/s while busy, threads)", _stage_cells(stages)))
            rows.append(("  held by", stages["held_by"]))
        rows.append(
            (
                "  whole process",
                f"{run['images_per_second']:,.0f} images/s ({run['wall_seconds']:.1f} s with start-up); "
                f"process CPU {run['cpu_seconds']:,.1f} s",
            )
        )
    return rows


def _stage_cells(stages: dict) -> str:
    def threads(stage: str) -> str:
        split = stages[stage]["threads"]
        return (
            f"{split['start']}->{split['final']}" if split["start"] != split["final"] else str(split["final"])
        )

    def rate(stage: str) -> str:
        value = stages[stage]["images_per_second"]
        return "-" if value is None else f"{value:,.0f}"

    return (
        f"decode {rate('decode')}/thread x {threads('decode')}, model {rate('model')} "
        f"({stages['model']['threads']} torch threads), finish {rate('finish')}/thread x {threads('finish')}"
    )


def _loads(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)
