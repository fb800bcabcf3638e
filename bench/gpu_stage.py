"""Measure (and check) the GPU stage on one machine, without Ray and without DuckDB.

    python -m bench.gpu_stage                # resnet50, relu + layer1..4, bf16, cuda
    python -m bench.gpu_stage --compile --json gpu.json
    python -m bench.gpu_stage --job 20000  # and the whole job (--executor local), 20,000 images
    python -m bench.gpu_stage --device cpu --model resnet18 --images 64 --batch-size 16 \
        --precision fp32

Synthetic ImageNet-like JPEGs (about 500x375, smooth colour fields with shapes, fine texture and noise,
quality 90, 4:2:0, 50-110 KB each) are made in memory; a few hundred distinct ones are cycled through.
Printed (and returned by `main`):

  (a) decode + preprocess: JPEG bytes -> (B, 3, crop, crop) uint8 on the device (pipeline.gpu.GpuDecoder)
  (b) forward + reductions + async copy, on uint8 tensors already on the device (GpuRecorder.submit)
  (c) end to end from JPEG bytes through the worker's own loop (pipeline.loop): decode of batch i+1 (in
      a background thread) overlaps the forward of batch i; also measured with decoding in the main thread
  (d) with --job N: the whole job, `python -m actindex index ... --executor local`, from N JPEG files (the
      synthetic ones, cycled, under distinct names) to Parquet, in a child process; its images/s
  peak device memory, the device's name, and a correctness check on a small sample: the GPU stage against
  the fp32 CPU reference (pipeline.decode.Decoder + pipeline.recorder.ActivationRecorder on the same bytes,
  written to a temporary folder), and against the device's own fp32 on the same pixels.

Only torch, torchvision, numpy, Pillow (and timm for timm models) are needed: rich is used when present.
The script exits 1 when the correctness check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from actindex.pipeline.loop import DecodedBatch, Prefetcher, record_batches
from actindex.pipeline.options import comma_list
from actindex.pipeline.synthetic import encode_jpeg, natural_image

DEFAULT_LAYERS = "relu,layer1,layer2,layer3,layer4"
# ImageNet's most common sizes, weighted toward 500x375
SIZES = ((500, 375), (500, 375), (500, 375), (500, 333), (375, 500), (500, 400), (333, 500), (400, 300))


# --------------------------------------------------------------------------------------------- images


def synthetic_jpegs(count: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """`count` distinct baseline 4:2:0 JPEGs of ImageNet-like sizes."""
    rng = np.random.default_rng(seed)
    return [encode_jpeg(natural_image(rng, *SIZES[i % len(SIZES)]), quality) for i in range(count)]


def correctness_sample(count: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """(name, bytes): plain JPEGs plus the cases the fast path must get right: EXIF-rotated, grayscale,
    progressive, and a PNG (the CPU fallback)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sample = []
    for i in range(max(count - 4, 1)):
        sample.append((f"plain-{i:03d}.jpg", encode_jpeg(natural_image(rng, *SIZES[i % len(SIZES)]))))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise to display
    special = [
        ("exif6.jpg", encode_jpeg(natural_image(rng, 500, 375), exif=exif.tobytes())),
        ("gray.jpg", encode_jpeg(natural_image(rng, 500, 375).convert("L"))),
        ("progressive.jpg", encode_jpeg(natural_image(rng, 375, 500), progressive=True)),
    ]
    png = io.BytesIO()
    natural_image(rng, 400, 300).save(png, "PNG")
    special.append(("fallback.png", png.getvalue()))
    return (sample + special)[:count]


# --------------------------------------------------------------------------------------------- timing


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(blobs: Sequence[bytes], batch_size: int, images: int) -> list[list[bytes]]:
    order = [blobs[i % len(blobs)] for i in range(images)]
    return [order[i : i + batch_size] for i in range(0, images, batch_size)]


def time_decode(decoder, blobs, batch_size: int, images: int, warmup: int = 2) -> float:
    """(a) images/s of GpuDecoder on JPEG bytes."""
    for batch in _batches(blobs, batch_size, batch_size * warmup):
        decoder(batch)
    _sync(decoder.device)
    start = time.perf_counter()
    done = 0
    for batch in _batches(blobs, batch_size, images):
        out = decoder(batch)
        done += len(batch)
    _sync(decoder.device)
    assert out.ok.all(), "synthetic JPEGs failed to decode"
    return done / (time.perf_counter() - start)


def run_loop(recorder, batches) -> int:
    """Images through the worker's model loop (pipeline.loop.record_batches): batch i+1 is submitted
    before batch i's results are waited for. `batches` yields DecodedBatches."""
    return sum(len(batch.ok) for batch, _ in record_batches(recorder, batches))


def _on_device(pixels) -> DecodedBatch:
    n = len(pixels)
    return DecodedBatch(
        pixels, np.ones(n, dtype=bool), np.zeros(n, np.int32), np.zeros(n, np.int32),
        np.full(n, "", dtype=object), np.ones(n, dtype=bool),
    )  # fmt: skip


def profile_overlap(decoder, recorder, blobs, batch_size: int, rounds: int = 6) -> dict:
    """Where the time goes, in ms per batch (medians): the decode call alone and while forwards run on the
    device, a forward alone, and the main-thread loop split into the decode call (and its phases), submit
    and the wait for the previous batch's results."""
    device = recorder.device
    batches = _batches(blobs, batch_size, batch_size * rounds)

    def timed(step) -> float:
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        return (time.perf_counter() - start) * 1e3

    pixels = decoder(batches[0]).ok_pixels()
    chosen = decoder.pin_inputs
    decoder.pin_inputs = decoder.device.type == "cuda" and not chosen
    other = float(np.median([timed(lambda b=b: decoder(b)) for b in batches]))
    decoder.pin_inputs = chosen
    out = {
        "decode_alone": float(np.median([timed(lambda b=b: decoder(b)) for b in batches])),
        "decode_alone_" + ("pageable" if chosen else "pinned") + "_inputs": other,
        "forward_alone": float(np.median([timed(lambda: recorder.submit(pixels).result()) for _ in batches])),
    }
    busy = []
    for batch in batches:
        _sync(device)
        queued = [recorder.submit(pixels) for _ in range(3)]
        start = time.perf_counter()
        decoder(batch)
        busy.append((time.perf_counter() - start) * 1e3)
        for pending in queued:
            pending.result()
    out["decode_while_forwards_run"] = float(np.median(busy))
    split: dict[str, list[float]] = {"loop_decode": [], "loop_submit": [], "loop_wait": []}
    decoder.timings.clear()
    pending = None
    for batch in batches:
        t0 = time.perf_counter()
        pixels = decoder(batch).ok_pixels()
        t1 = time.perf_counter()
        submitted = recorder.submit(pixels)
        t2 = time.perf_counter()
        if pending is not None:
            pending.result()
        t3 = time.perf_counter()
        pending = submitted
        for key, value in zip(split, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            split[key].append(value * 1e3)
    pending.result()
    out.update({key: float(np.median(values)) for key, values in split.items()})
    out.update({f"loop_decode_{k}": v * 1e3 / len(batches) for k, v in decoder.timings.items()})
    return {key: round(value, 2) for key, value in out.items()}


def time_forward(recorder, batch_size: int, images: int, crop: int, warmup: int = 2) -> float:
    """(b) images/s of forward + reductions + async copies on uint8 pixels already on the device."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(0)
    pixels = torch.randint(0, 256, (batch_size, 3, crop, crop), dtype=torch.uint8, generator=generator)
    batch = _on_device(pixels.to(recorder.device))
    run_loop(recorder, [batch] * warmup)
    _sync(recorder.device)
    count = max(1, images // batch_size)
    start = time.perf_counter()
    done = run_loop(recorder, [batch] * count)
    _sync(recorder.device)
    return done / (time.perf_counter() - start)


def time_end_to_end(
    decoder, recorder, blobs, batch_size: int, images: int, threaded: bool = True, warmup: int = 2
) -> float:
    """(c) images/s from JPEG bytes to (B, U) numpy results on the host, through the worker's loop:
    `threaded` decodes in a background thread (pipeline.loop.Prefetcher), as the job does; otherwise
    batch i+1 is decoded in the main thread between submitting batch i and waiting for it."""
    from concurrent.futures import ThreadPoolExecutor

    def measure(batches) -> int:
        if not threaded:
            return run_loop(recorder, (decoder(batch) for batch in batches))
        with ThreadPoolExecutor(1, thread_name_prefix="actindex-decode") as pool:
            return run_loop(recorder, Prefetcher(lambda batch: decoder(batch, wait=False), batches, pool))

    measure(_batches(blobs, batch_size, batch_size * warmup))
    _sync(recorder.device)
    start = time.perf_counter()
    done = measure(_batches(blobs, batch_size, images))
    _sync(recorder.device)
    return done / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------- correctness


def compare(got: dict, want: dict, k: int) -> dict:
    """Argmax agreement (fraction of image x unit pairs), max relative error (per layer, relative to the
    layer's largest |act|), and per-unit top-k overlap (ties to the smaller image index)."""
    agree, total, rel, overlaps = 0, 0, 0.0, []
    for name, (want_act, want_pos) in want.items():
        act, pos = got[name]
        agree += int((pos == want_pos).sum())
        total += pos.size
        scale = float(np.abs(want_act).max())
        rel = max(rel, float(np.abs(act - want_act).max()) / scale if scale > 0 else 0.0)
        top_got = np.argsort(-act, axis=0, kind="stable")[:k]
        top_want = np.argsort(-want_act, axis=0, kind="stable")[:k]
        for unit in range(act.shape[1]):
            overlaps.append(len(set(top_got[:, unit]) & set(top_want[:, unit])) / k)
    return {
        "argmax_agreement": agree / total,
        "max_rel_error": rel,
        "topk": k,
        "topk_overlap_mean": float(np.mean(overlaps)),
        "topk_overlap_min": float(np.min(overlaps)),
    }


def check_correctness(args, decoder, stage, count: int) -> dict:
    """The GPU stage (`decoder`, `stage`) vs the fp32 CPU reference on `count` images, plus the device's own
    fp32 run on the same pixels."""
    import torch

    from actindex.pipeline.decode import Decoder
    from actindex.pipeline.gpu import GpuRecorder
    from actindex.pipeline.models import load_model
    from actindex.pipeline.recorder import ActivationRecorder

    sample = correctness_sample(count)
    blobs = [blob for _, blob in sample]
    with tempfile.TemporaryDirectory(prefix="actindex-gpu-check-") as folder:
        paths = []
        for name, blob in sample:
            paths.append(os.path.join(folder, name))
            with open(paths[-1], "wb") as f:
                f.write(blob)
        reference_model = load_model(args.model, args.weights)
        prep = decoder.preprocessing
        cpu = Decoder(prep).decode_batch({"uri": np.array(paths)})
        reference = ActivationRecorder(reference_model.module, stage.layers, prep, "cpu")(cpu["pixels"])

    device = stage.device
    decoded = decoder(blobs)
    got = stage(decoded.pixels)
    same_pixels = stage(torch.from_numpy(cpu["pixels"]).to(device))
    fp32_model = load_model(args.model, args.weights)
    assert fp32_model.weights_sha256 == reference_model.weights_sha256  # seeded: the same network
    stage_fp32 = GpuRecorder(fp32_model.module, stage.layers, prep, device, "fp32", False)
    fp32_same_pixels = stage_fp32(torch.from_numpy(cpu["pixels"]).to(device))

    ok = decoded.ok & cpu["ok"]
    diff = np.abs(decoded.pixels.cpu().numpy()[ok].astype(np.int16) - cpu["pixels"][ok].astype(np.int16))
    k = max(1, min(10, count // 2))
    result = {
        "images": count,
        "decoded_on_device": int(decoded.on_device.sum()),
        "cpu_fallback": [name for (name, _), on in zip(sample, decoded.on_device, strict=True) if not on],
        "same_ok": bool(np.array_equal(decoded.ok, cpu["ok"])),
        "same_size": bool(
            np.array_equal(decoded.width, cpu["width"]) and np.array_equal(decoded.height, cpu["height"])
        ),
        "pixel_mean_abs_diff": float(diff.mean()),
        "pixel_max_abs_diff": int(diff.max()),
        # the whole stage (device decode + precision) against the fp32 CPU reference
        "stage_vs_cpu": compare(got, reference, k),
        # the same pixels (the CPU decoder's): precision only
        "same_pixels_vs_cpu": compare(same_pixels, reference, k),
        "fp32_same_pixels_vs_cpu": compare(fp32_same_pixels, reference, k),
        "precision_vs_fp32_on_device": compare(same_pixels, fp32_same_pixels, k),
    }
    lowp = args.precision != "fp32"
    checks = {
        "ok flags and upright sizes equal the CPU decoder's": result["same_ok"] and result["same_size"],
        "pixels: mean |diff| <= 2 grey levels": result["pixel_mean_abs_diff"] <= 2.0,
        "fp32 on identical pixels: argmax agreement >= 0.99": (
            result["fp32_same_pixels_vs_cpu"]["argmax_agreement"] >= 0.99
        ),
        "fp32 on identical pixels: max rel error <= 1e-3": (
            result["fp32_same_pixels_vs_cpu"]["max_rel_error"] <= 1e-3
        ),
        f"{args.precision} on identical pixels: top-{k} overlap mean >= {0.8 if lowp else 0.99}": (
            result["same_pixels_vs_cpu"]["topk_overlap_mean"] >= (0.8 if lowp else 0.99)
        ),
        f"{args.precision} on identical pixels: max rel error <= {0.05 if lowp else 1e-3}": (
            result["same_pixels_vs_cpu"]["max_rel_error"] <= (0.05 if lowp else 1e-3)
        ),
        "whole stage: top-k overlap mean >= 0.7": result["stage_vs_cpu"]["topk_overlap_mean"] >= 0.7,
    }
    result["checks"] = checks
    result["passed"] = all(checks.values())
    return result


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_stage", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument(
        "--weights",
        default=None,
        help="As actindex index: none = pretrained (DEFAULT); random (seeded); a .pth",
    )
    parser.add_argument("--layers", default=DEFAULT_LAYERS, help="comma-separated names or globs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2048, help="images per measurement")
    parser.add_argument("--distinct", type=int, default=256, help="distinct synthetic JPEGs, cycled")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the traced forward")
    parser.add_argument("--resize", type=int, default=None, help="override the model's resize")
    parser.add_argument("--crop", type=int, default=None, help="override the model's crop")
    parser.add_argument("--interpolation", default=None, help="override the model's interpolation")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--check-images", type=int, default=32, help="correctness sample (0 = skip)")
    parser.add_argument("--profile", action="store_true", help="also time the loop's parts (ms per batch)")
    parser.add_argument("--pin-inputs", action="store_true", help="stage JPEG bytes in pinned memory")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--job", type=int, default=0, help="also run the whole job on this many JPEG files")
    return parser.parse_args(argv)


def preprocessing(args: argparse.Namespace, own):
    """The model's own preprocessing with --resize/--crop/--interpolation applied."""
    from dataclasses import replace

    overrides = {"resize": args.resize, "crop": args.crop, "interpolation": args.interpolation}
    return replace(own, **{key: value for key, value in overrides.items() if value is not None})


def main(argv: Sequence[str] | None = None) -> dict:
    import torch
    import torchvision

    from actindex.pipeline.gpu import GpuDecoder, GpuRecorder
    from actindex.pipeline.layers import resolve_layers
    from actindex.pipeline.models import load_model

    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; pass --device cpu")
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    loaded = load_model(args.model, args.weights)
    prep = preprocessing(args, loaded.preprocessing)
    patterns = list(comma_list(args.layers))
    layers = resolve_layers(loaded.module, patterns, args.model)
    started = time.perf_counter()
    blobs = synthetic_jpegs(min(args.distinct, args.images))
    made = time.perf_counter() - started

    decoder = GpuDecoder(prep, device, pin_inputs=args.pin_inputs)
    compile_started = time.perf_counter()
    recorder = GpuRecorder(
        loaded.module,
        layers,
        prep,
        device,
        precision=args.precision,
        channels_last=not args.no_channels_last,
        compile=args.compile,
    )
    results: dict = {
        "device": device_name,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "model": args.model,
        "layers": layers,
        "units": sum(recorder.units.values()),
        "preprocessing": prep.to_dict(),
        "precision": args.precision,
        "channels_last": not args.no_channels_last,
        "compile": args.compile,
        "batch_size": args.batch_size,
        "images": args.images,
        "distinct_jpegs": len(blobs),
        "mean_jpeg_bytes": int(np.mean([len(b) for b in blobs])),
        "synthesis_s": round(made, 2),
    }
    if args.compile:  # compile on the first batch, outside the timings
        run_loop(
            recorder, [_on_device(torch.zeros((args.batch_size, 3, prep.crop, prep.crop), dtype=torch.uint8))]
        )
        _sync(device)
        results["compile_s"] = round(time.perf_counter() - compile_started, 1)

    def peak(step):
        if device.type != "cuda":
            return step(), None
        torch.cuda.reset_peak_memory_stats(device)
        value = step()
        return value, torch.cuda.max_memory_allocated(device) / 2**30

    results["decode_images_per_s"], results["decode_peak_gib"] = peak(
        lambda: time_decode(decoder, blobs, args.batch_size, args.images)
    )
    results["forward_images_per_s"], results["forward_peak_gib"] = peak(
        lambda: time_forward(recorder, args.batch_size, args.images, prep.crop)
    )
    results["end_to_end_images_per_s"], results["end_to_end_peak_gib"] = peak(
        lambda: time_end_to_end(decoder, recorder, blobs, args.batch_size, args.images)
    )
    results["end_to_end_one_thread_images_per_s"] = time_end_to_end(
        decoder, recorder, blobs, args.batch_size, args.images, threaded=False
    )
    if args.profile:
        results["profile_ms_per_batch"] = profile_overlap(decoder, recorder, blobs, args.batch_size)
        print(json.dumps(results["profile_ms_per_batch"]))
    if args.check_images > 0:
        results["correctness"] = check_correctness(args, decoder, recorder, args.check_images)
    if args.job:
        del decoder, recorder  # the job's worker loads its own copy of the model
        results["job"] = run_whole_job(args, blobs, layers)
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def run_whole_job(args: argparse.Namespace, blobs: list[bytes], layers: list[str]) -> dict:
    """(d) The whole job, `python -m actindex index ... --executor local`, on args.job JPEG files written to a
    temporary folder (the synthetic JPEGs, cycled, under distinct names): its images/s and the index
    process's own CPU time, in a child process."""
    import shutil
    import subprocess

    from actindex.jobs.benchmark import parse_report

    folder = tempfile.mkdtemp(prefix="actindex-job-")
    try:
        images = os.path.join(folder, "images")
        os.makedirs(images)
        for i in range(args.job):
            with open(os.path.join(images, f"img{i:07d}.jpg"), "wb") as f:
                f.write(blobs[i % len(blobs)])
        out = os.path.join(folder, "index")
        command = [sys.executable, "-m", "actindex.jobs.measured", images, "--out", out]
        command += ["--executor", "local"]
        command += ["--model", args.model, "--layers", ",".join(layers), "--batch-size", str(args.batch_size)]
        command += ["--precision", args.precision, "--device", args.device, "--no-progress"]
        for option in ("resize", "crop", "interpolation", "weights"):
            if getattr(args, option) is not None:
                command += [f"--{option}", str(getattr(args, option))]
        if args.compile:
            command.append("--compile")
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"the job failed:\n{done.stderr[-3000:]}")
        with open(os.path.join(out, "run.json")) as f:
            manifest = json.load(f)
        return {
            "images": manifest["new_images"],
            "images_per_s": manifest["new_images"] / wall,
            "images_per_s_after_startup": manifest["steady_images_per_second"],
            "job_seconds": manifest["seconds"],
            "wall_seconds": wall,
            "activation_rows": manifest["activation_rows"],
            **parse_report(done.stderr),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(results: dict) -> None:
    gib = results.get("end_to_end_peak_gib")
    rows = [
        ("device", results["device"]),
        ("torch / torchvision", f"{results['torch']} / {results['torchvision']}"),
        ("model, layers (units)", f"{results['model']}, {','.join(results['layers'])} ({results['units']})"),
        (
            "precision, channels_last, compile",
            f"{results['precision']}, {results['channels_last']}, {results['compile']}"
            + (f" ({results['compile_s']} s)" if "compile_s" in results else ""),
        ),
        ("batch size, images", f"{results['batch_size']}, {results['images']}"),
        ("JPEGs", f"{results['distinct_jpegs']} distinct, mean {results['mean_jpeg_bytes']:,} bytes"),
        ("(a) decode + preprocess", f"{results['decode_images_per_s']:,.0f} images/s"),
        ("(b) forward + reductions", f"{results['forward_images_per_s']:,.0f} images/s"),
        ("(c) end to end from JPEG bytes", f"{results['end_to_end_images_per_s']:,.0f} images/s"),
        (
            "    same, decoding in the main thread",
            f"{results['end_to_end_one_thread_images_per_s']:,.0f} images/s",
        ),
        ("peak device memory", "n/a (cpu)" if gib is None else f"{gib:.2f} GiB"),
    ]
    job = results.get("job")
    if job:
        steady = job["images_per_s_after_startup"]
        steady = "-" if steady is None else f"{steady:,.0f}"  # too short a run to measure
        rows += [
            (
                f"(d) whole job, --executor local, {job['images']:,} files",
                f"{job['images_per_s']:,.0f} images/s ({steady} after start-up); "
                f"{job['images_per_s'] / results['end_to_end_images_per_s']:.2f}x of (c)",
            ),
            (
                "    index process CPU, peak RSS",
                f"{job['cpu_seconds']:,.1f} s, {job['peak_rss_mib']:,.0f} MiB",
            ),
        ]
    check = results.get("correctness")
    if check:
        stage, same = check["stage_vs_cpu"], check["same_pixels_vs_cpu"]
        rows += [
            (
                "check: images (on device, CPU fallback)",
                f"{check['images']} ({check['decoded_on_device']}, "
                f"{', '.join(check['cpu_fallback']) or 'none'})",
            ),
            (
                "check: pixels vs CPU decoder",
                f"mean |diff| {check['pixel_mean_abs_diff']:.3f}, max {check['pixel_max_abs_diff']}",
            ),
            ("check: stage vs fp32 CPU reference", _describe(stage)),
            (f"check: {results['precision']} vs fp32 CPU, same pixels", _describe(same)),
            ("check: fp32 on device vs CPU, same pixels", _describe(check["fp32_same_pixels_vs_cpu"])),
            (
                f"check: {results['precision']} vs fp32, on device",
                _describe(check["precision_vs_fp32_on_device"]),
            ),
            (
                "check",
                "PASSED"
                if check["passed"]
                else "FAILED: " + "; ".join(name for name, good in check["checks"].items() if not good),
            ),
        ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(name) for name, _ in rows)
        print("actindex GPU stage")
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
        return
    table = Table(title="actindex GPU stage", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for name, value in rows:
        table.add_row(name, str(value))
    Console(width=160).print(table)


def _describe(stats: dict) -> str:
    return (
        f"argmax agree {stats['argmax_agreement']:.4f}, max rel err {stats['max_rel_error']:.2e}, "
        f"top-{stats['topk']} overlap mean {stats['topk_overlap_mean']:.3f} "
        f"min {stats['topk_overlap_min']:.2f}"
    )


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if outcome.get("correctness", {"passed": True})["passed"] else 1)
