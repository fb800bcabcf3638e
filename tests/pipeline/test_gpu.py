"""The GPU path (pipeline.gpu, bench.gpu_stage) run on the CPU: geometry, EXIF, colour modes, fallbacks,
recorder equality with ActivationRecorder, and the measuring script end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.models import resnet18

from actindex.pipeline.decode import Decoder
from actindex.pipeline.gpu import (
    GpuDecoder,
    GpuRecorder,
    device_decodable,
    orient,
    parse_jpeg_header,
    traced_reductions,
)
from actindex.pipeline.loop import Prefetcher, record_batches
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.recorder import ActivationRecorder

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec; they are what nvjpeg runs through
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

GRAY = (128, 128, 128)
RED = (220, 30, 30)


def jpeg_bytes(img: Image.Image, quality: int = 92, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, **options)
    return out.getvalue()


def cpu_decode(decoder: Decoder, blob: bytes, folder: Path, name: str = "image.jpg"):
    path = folder / name
    path.write_bytes(blob)
    return decoder(str(path))


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour field: an image where every region looks different (so misplacement shows)."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)


def red_box(pixels: np.ndarray) -> tuple[float, float, int, int, int, int]:
    """Centroid (x, y) and bounding box (x0, y0, x1, y1 exclusive) of the red pixels of a (3, H, W) image."""
    r, g, b = (pixels[c].astype(int) for c in range(3))
    ys, xs = np.nonzero((r > 150) & (g < 100) & (b < 100))
    assert len(xs) > 20, "the planted square is not in the crop"
    return xs.mean(), ys.mean(), xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
@pytest.mark.parametrize(
    ("width", "height", "square"), [(500, 375, (300, 120, 60)), (2000, 1500, (1200, 480, 240))]
)
def test_planted_square_lands_where_the_cpu_decoder_puts_it(tmp_path, interpolation, width, height, square):
    # 2000x1500 is decoded by the CPU decoder in DCT draft mode: the geometry must still agree
    x, y, side = square
    img = Image.new("RGB", (width, height), GRAY)
    img.paste(RED, (x, y, x + side, y + side))
    blob = jpeg_bytes(img)
    prep = Preprocessing(resize=256, crop=224, interpolation=interpolation)
    want = cpu_decode(Decoder(prep), blob, tmp_path)
    got = GpuDecoder(prep, "cpu")([blob])
    assert got.ok.tolist() == [True] and got.on_device.tolist() == [True]
    assert (got.width[0], got.height[0]) == (want.width, want.height) == (width, height)
    mine, theirs = red_box(got.pixels[0].numpy()), red_box(want.pixels)
    assert np.allclose(mine, theirs, atol=1.0), (mine, theirs)
    # and where the geometry says: resize factor 256 / 375 or 256 / 1500, crop origin (58, 16)
    new_w, new_h = prep.resized_size(width, height)
    left, top = prep.crop_origin(new_w, new_h)
    scale = new_h / height
    expected = ((x + side / 2) * scale - left - 0.5, (y + side / 2) * scale - top - 0.5)
    assert np.allclose(mine[:2], expected, atol=1.0), (mine[:2], expected)


def test_pixels_close_to_the_cpu_decoder(tmp_path):
    prep = Preprocessing(resize=256, crop=224)
    blobs = [
        jpeg_bytes(textured(w, h, seed)) for seed, (w, h) in enumerate([(500, 375), (375, 500), (640, 427)])
    ]
    got = GpuDecoder(prep, "cpu")(blobs)
    for i, blob in enumerate(blobs):
        want = cpu_decode(Decoder(prep), blob, tmp_path)
        diff = np.abs(got.pixels[i].numpy().astype(int) - want.pixels.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 3  # rounding only: same libjpeg, PIL-style kernels


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_image(tmp_path, orientation):
    img = textured(200, 120)
    img.paste(RED, (10, 10, 50, 40))  # top-left corner marker
    exif = Image.Exif()
    exif[0x0112] = orientation
    blob = jpeg_bytes(img, exif=exif.tobytes())
    header = parse_jpeg_header(blob)
    assert header is not None and header.orientation == orientation
    # the same transposition as torchvision's CPU apply_exif_orientation (not available for CUDA decoding)
    raw = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    upright = decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    assert torch.equal(orient(decode_jpeg(raw, mode=ImageReadMode.RGB), orientation), upright)

    prep = Preprocessing(resize=64, crop=64)
    want = cpu_decode(Decoder(prep), blob, tmp_path)
    got = GpuDecoder(prep, "cpu")([blob])
    rotated = orientation in (5, 6, 7, 8)
    assert (
        (got.width[0], got.height[0]) == (want.width, want.height) == ((120, 200) if rotated else (200, 120))
    )
    assert np.abs(got.pixels[0].numpy().astype(int) - want.pixels.astype(int)).max() <= 2


def test_xmp_orientation_when_exif_has_none():
    blob = jpeg_bytes(textured(60, 40))
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'
    segment = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    blob = blob[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + blob[2:]
    assert Image.open(io.BytesIO(blob)).getexif()[0x0112] == 8  # what Pillow (the CPU decoder) sees
    assert parse_jpeg_header(blob).orientation == 8
    assert parse_jpeg_header(blob).upright_size() == (40, 60)


def test_grayscale_and_cmyk_jpegs_decode_as_rgb(tmp_path):
    prep = Preprocessing(resize=64, crop=64)
    gray = jpeg_bytes(textured(120, 90).convert("L"))
    cmyk = jpeg_bytes(textured(120, 90, seed=3).convert("CMYK"))
    got = GpuDecoder(prep, "cpu")([gray, cmyk])
    assert got.ok.all() and got.pixels.shape == (2, 3, 64, 64)
    g = got.pixels[0].numpy()
    assert np.array_equal(g[0], g[1]) and np.array_equal(g[1], g[2])  # gray replicated into RGB
    for i, blob in enumerate([gray, cmyk]):
        want = cpu_decode(Decoder(prep), blob, tmp_path)
        assert np.abs(got.pixels[i].numpy().astype(int) - want.pixels.astype(int)).max() <= 2
    # on CUDA a 4-component JPEG is left to the CPU decoder (Adobe's inverted CMYK is Pillow's business)
    header = parse_jpeg_header(cmyk)
    assert header.components == 4
    assert device_decodable(header, "cpu", 10**9) and not device_decodable(header, "cuda", 10**9)
    assert device_decodable(parse_jpeg_header(gray), "cuda", 10**9)


def bogus_huffman(blob: bytes) -> bytes:
    """A JPEG whose header parses but whose Huffman table the decoder rejects."""
    at = blob.find(b"\xff\xc4")
    broken = bytearray(blob)
    broken[at + 5 : at + 21] = b"\xff" * 16
    return bytes(broken)


def test_png_and_corrupt_files_fall_back_to_the_cpu_decoder(tmp_path):
    prep = Preprocessing(resize=64, crop=64)
    good = jpeg_bytes(textured(100, 75))
    png = io.BytesIO()
    textured(90, 70, seed=5).save(png, "PNG")
    batch = [
        ("good.jpg", good),
        ("photo.png", png.getvalue()),
        ("truncated.jpg", good[: len(good) // 2]),
        ("header.jpg", good[:3] + b"not a jpeg header" * 4),
        ("huffman.jpg", bogus_huffman(good)),  # passes the header check: the device decoder rejects it
        ("good2.jpg", jpeg_bytes(textured(75, 100, seed=2))),
        ("empty.jpg", b""),
    ]
    got = GpuDecoder(prep, "cpu")([blob for _, blob in batch])
    assert got.pixels.shape == (7, 3, 64, 64)
    assert got.on_device.tolist() == [True, False, False, False, False, True, False]
    assert got.ok.tolist() == [True, True, False, False, False, True, False]
    for i, (name, blob) in enumerate(batch):
        want = cpu_decode(Decoder(prep), blob, tmp_path, name)
        assert got.error[i] == (want.error or "")
        assert (got.width[i], got.height[i]) == (want.width, want.height)
        if name == "photo.png":
            assert np.array_equal(got.pixels[i].numpy(), want.pixels)  # the CPU decoder's own pixels
        if not got.ok[i]:
            assert not got.pixels[i].any()
    kinds = {name: str(error).split(":")[0] for (name, _), error in zip(batch, got.error, strict=True)}
    assert kinds == {
        "good.jpg": "",
        "photo.png": "",
        "truncated.jpg": "truncated",
        "header.jpg": "corrupt",
        "huffman.jpg": "corrupt",
        "good2.jpg": "",
        "empty.jpg": "not an image",
    }
    ok_pixels = got.ok_pixels()
    assert ok_pixels.shape == (3, 3, 64, 64) and torch.equal(ok_pixels[2], got.pixels[5])


def test_decode_files_reports_the_real_file(tmp_path):
    prep = Preprocessing(resize=64, crop=64)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(textured(100, 75)))
    got = GpuDecoder(prep, "cpu").decode_files([str(tmp_path / "a.jpg"), str(tmp_path / "missing.jpg")])
    assert got.ok.tolist() == [True, False]
    assert got.error[1] == "unreadable: file not found"


LAYERS = ["relu", "layer1", "layer1.0.bn2", "layer2.0.conv1", "layer3", "layer4", "fc"]
PREP = Preprocessing(resize=64, crop=64)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))


def fresh(model: torch.nn.Module) -> torch.nn.Module:
    copy = resnet18(weights=None).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_gpu_recorder_fp32_equals_activation_recorder(model, pixels):
    want = ActivationRecorder(fresh(model), LAYERS, PREP)(pixels.numpy())
    recorder = GpuRecorder(fresh(model), LAYERS, PREP, "cpu", precision="fp32", channels_last=False)
    assert recorder.units == {
        "relu": 64,
        "layer1": 64,
        "layer1.0.bn2": 64,
        "layer2.0.conv1": 128,
        "layer3": 256,
        "layer4": 512,
        "fc": 1000,
    }
    pending = recorder.submit(pixels)
    assert pending.ready()
    got = pending.result()
    assert list(got) == LAYERS
    for name in LAYERS:
        act, pos = got[name]
        assert act.dtype == np.float32 and pos.dtype == np.int32 and act.shape == (4, recorder.units[name])
        np.testing.assert_array_equal(pos, want[name][1])
        np.testing.assert_allclose(act, want[name][0], rtol=1e-6, atol=1e-6)
    assert hook_count(recorder.model) == 0

    # channels_last changes the summation order only
    last = GpuRecorder(fresh(model), LAYERS, PREP, "cpu", precision="fp32", channels_last=True)(pixels)
    for name in LAYERS:
        np.testing.assert_allclose(last[name][0], want[name][0], rtol=1e-4, atol=1e-4)
        assert (last[name][1] == want[name][1]).mean() >= 0.99


def test_hooks_detach_when_the_forward_fails(model):
    recorder = GpuRecorder(fresh(model), ["layer4"], PREP, "cpu", precision="fp32")
    with pytest.raises(RuntimeError):
        recorder(torch.zeros((2, 5, 64, 64), dtype=torch.uint8))  # 5 channels: conv1 refuses
    assert hook_count(recorder.model) == 0


def test_bf16_autocast_on_cpu_is_close(model, pixels):
    want = ActivationRecorder(fresh(model), LAYERS, PREP)(pixels.numpy())
    got = GpuRecorder(fresh(model), LAYERS, PREP, "cpu", precision="bf16")(pixels)
    for name in LAYERS:
        scale = np.abs(want[name][0]).max()
        assert np.abs(got[name][0] - want[name][0]).max() / scale < 0.05
        assert (got[name][1] == want[name][1]).mean() > 0.9
    with pytest.raises(ValueError, match="precision"):
        GpuRecorder(fresh(model), LAYERS, PREP, "cpu", precision="int8")


def test_traced_reductions_and_compile_match_the_hooks(model, pixels):
    want = ActivationRecorder(fresh(model), LAYERS, PREP)(pixels.numpy())
    recorder = GpuRecorder(fresh(model), LAYERS, PREP, "cpu", precision="fp32", channels_last=False)
    # bn1 and layer1.0.bn2 are followed by in-place ops (ReLU(inplace=True), +=): reduced before them,
    # as the hooks do
    graph = traced_reductions(fresh(model), LAYERS + ["bn1"])
    with torch.inference_mode():
        act, pos = graph(recorder.normalize(pixels))
    bn1 = ActivationRecorder(fresh(model), ["bn1"], PREP)(pixels.numpy())["bn1"]
    start = 0
    for name in LAYERS:
        units = recorder.units[name]
        np.testing.assert_array_equal(pos[:, start : start + units].numpy(), want[name][1])
        np.testing.assert_allclose(act[:, start : start + units].numpy(), want[name][0], rtol=1e-6, atol=1e-6)
        start += units
    np.testing.assert_array_equal(pos[:, start:].numpy(), bn1[1])
    # layer1.0.bn2 is reduced before `out += identity` changes it: its maxima are not the block output's
    block = ActivationRecorder(fresh(model), ["layer1.0"], PREP)(pixels.numpy())["layer1.0"]
    assert not np.allclose(want["layer1.0.bn2"][0], block[0])

    truncated = traced_reductions(fresh(model), ["layer2"])
    targets = {node.target for node in truncated.graph.nodes if node.op == "call_module"}
    assert "layer2.1.relu" in targets and not any(str(t).startswith(("layer3", "fc")) for t in targets)

    compiled = GpuRecorder(
        fresh(model), LAYERS, PREP, "cpu", precision="fp32", channels_last=False, compile="eager"
    )
    got = compiled(pixels[:3])
    short = compiled(pixels[3:])  # padded to the compiled batch, not recompiled
    for name in LAYERS:
        np.testing.assert_array_equal(np.concatenate([got[name][1], short[name][1]]), want[name][1])
    assert hook_count(compiled.model) == 0


def test_gpu_stage_script_runs_on_cpu(tmp_path, capsys):
    from bench.gpu_stage import main

    out = tmp_path / "gpu.json"
    argv = "--device cpu --model resnet18 --weights random --images 16 --batch-size 8 --precision fp32"
    argv += " --resize 40 --crop 32"
    results = main([*argv.split(), "--check-images", "8", "--distinct", "8", "--json", str(out)])
    for key in ("decode_images_per_s", "forward_images_per_s", "end_to_end_images_per_s"):
        assert 0 < results[key] < 1e6
    assert results["units"] == 64 + 64 + 128 + 256 + 512
    check = results["correctness"]
    assert check["passed"], check["checks"]
    assert check["decoded_on_device"] == 7 and check["cpu_fallback"] == ["fallback.png"]
    assert check["fp32_same_pixels_vs_cpu"]["argmax_agreement"] == 1.0
    assert check["pixel_mean_abs_diff"] < 1.0
    assert json.loads(out.read_text())["correctness"]["passed"]
    printed = capsys.readouterr().out
    assert "end to end" in printed and "PASSED" in printed


def test_gpu_modules_import_without_ray_duckdb_or_typer():
    code = (
        "import sys, bench.gpu_stage, actindex.pipeline.gpu\n"
        "bad = [m for m in ('ray', 'duckdb', 'typer', 'pyarrow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_decoding_in_a_prefetch_thread_gives_the_batches_in_order():
    from concurrent.futures import ThreadPoolExecutor

    prep = Preprocessing(resize=64, crop=64)
    decoder = GpuDecoder(prep, "cpu")
    blobs = [jpeg_bytes(textured(100 + 10 * i, 75, seed=i)) for i in range(7)] + [b"junk"]
    batches = [blobs[i : i + 3] for i in range(0, len(blobs), 3)]
    with ThreadPoolExecutor(1) as pool:
        got = list(Prefetcher(lambda batch: decoder(batch, wait=False), batches, pool, depth=1))
    assert [len(b.ok) for b in got] == [3, 3, 2]
    for batch, decoded in zip(batches, got, strict=True):
        direct = decoder(batch)
        assert torch.equal(decoded.wait(), direct.pixels) and list(decoded.error) == list(direct.error)
        assert decoded.width.tolist() == direct.width.tolist()
    assert got[-1].ok.tolist() == [True, False]


def test_the_fallback_hook_decodes_what_the_device_decoder_leaves(tmp_path):
    prep = Preprocessing(resize=64, crop=64)
    png = io.BytesIO()
    textured(80, 60).save(png, "PNG")
    blobs = [jpeg_bytes(textured(80, 60)), png.getvalue(), b"junk"]
    asked = []

    def fallback(i):
        asked.append(i)
        return cpu_decode(Decoder(prep), blobs[i], tmp_path, f"{i}.img")

    got = GpuDecoder(prep, "cpu")(blobs, fallback=fallback)
    assert (
        asked == [1, 2] and got.ok.tolist() == [True, True, False] and got.error[2].startswith("not an image")
    )


def test_nested_layers_ending_on_one_node_each_reduce_their_own_module(model, pixels):
    """layer4 and layer4.1 end on the same node (the block's last relu): compiled or not, both reduce
    the module's output, not the add before it."""
    layers = ["layer4", "layer4.1", "layer3.1", "layer3"]
    want = ActivationRecorder(fresh(model), layers, PREP)(pixels.numpy())
    np.testing.assert_array_equal(want["layer4"][0], want["layer4.1"][0])
    compiled = GpuRecorder(
        fresh(model), layers, PREP, "cpu", precision="fp32", channels_last=False, compile="eager"
    )(pixels)
    for name in layers:
        np.testing.assert_allclose(compiled[name][0], want[name][0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(compiled[name][1], want[name][1])


# ------------------------------------------------------------------ CUDA only (skipped on CPU machines)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def mixed_batch() -> list[tuple[str, bytes]]:
    """Every case the device decoder and its fallbacks must handle, in one batch."""
    good = jpeg_bytes(textured(500, 375))
    batch = [("plain.jpg", good), ("portrait.jpg", jpeg_bytes(textured(375, 500, seed=1)))]
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        img = textured(320, 200, seed=orientation)
        img.paste(RED, (10, 10, 60, 50))
        batch.append((f"exif{orientation}.jpg", jpeg_bytes(img, exif=exif.tobytes())))
    png = io.BytesIO()
    textured(300, 200, seed=9).save(png, "PNG")
    batch += [
        ("gray.jpg", jpeg_bytes(textured(400, 300, seed=10).convert("L"))),
        ("cmyk.jpg", jpeg_bytes(textured(400, 300, seed=11).convert("CMYK"))),
        ("progressive.jpg", jpeg_bytes(textured(400, 300, seed=12), progressive=True)),
        ("444.jpg", jpeg_bytes(textured(400, 300, seed=13), subsampling=0)),
        ("photo.png", png.getvalue()),
        ("truncated.jpg", good[: len(good) // 2]),
        ("huffman.jpg", bogus_huffman(good)),
        ("empty.jpg", b""),
        ("large.jpg", jpeg_bytes(textured(2400, 1800, seed=14))),
    ]
    return batch


@cuda
def test_cuda_decoder_agrees_with_the_cpu_decoder(tmp_path):
    prep = Preprocessing(resize=256, crop=224)
    batch = mixed_batch()
    got = GpuDecoder(prep, "cuda")([blob for _, blob in batch])
    assert got.pixels.is_cuda and got.pixels.shape == (len(batch), 3, 224, 224)
    pixels = got.pixels.cpu().numpy()
    fallback = {"cmyk.jpg", "photo.png", "truncated.jpg", "huffman.jpg", "empty.jpg"}
    for i, (name, blob) in enumerate(batch):
        want = cpu_decode(Decoder(prep), blob, tmp_path, name)
        assert got.error[i] == (want.error or ""), name
        assert (got.width[i], got.height[i]) == (want.width, want.height), name
        assert bool(got.on_device[i]) == (name not in fallback), name
        if want.error is None:
            diff = np.abs(pixels[i].astype(int) - want.pixels.astype(int))
            print(f"{name}: mean |diff| {diff.mean():.3f}, max {diff.max()}")
            assert diff.mean() < 2.0, name  # nvjpeg's IDCT and chroma upsampling are not libjpeg's


@cuda
def test_cuda_recorder_fp32_matches_the_cpu_recorder(model, pixels):
    want = ActivationRecorder(fresh(model), LAYERS, PREP)(pixels.numpy())
    got = GpuRecorder(fresh(model), LAYERS, PREP, "cuda", precision="fp32")(pixels.cuda())
    for name in LAYERS:
        np.testing.assert_allclose(got[name][0], want[name][0], rtol=1e-4, atol=1e-4)
        assert (got[name][1] == want[name][1]).mean() >= 0.99


@cuda
def test_cuda_pipelined_loop_equals_one_batch_at_a_time(model):
    """The worker's loop (decode in a thread, forward, async copies, the next batch submitted before the
    last is waited for): the same results as a loop that synchronizes after every step (a missing stream
    dependency would show as different numbers)."""
    prep = Preprocessing(resize=256, crop=224)
    blobs = [jpeg_bytes(textured(500, 375, seed=i)) for i in range(24)]
    batches = [[blobs[(i * 7 + j) % 24] for j in range(48)] for i in range(8)]
    decoder = GpuDecoder(prep, "cuda")
    recorder = GpuRecorder(fresh(model), ["layer1", "layer3", "fc"], prep, "cuda", precision="bf16")
    want = []
    for batch in batches:
        pixels = decoder(batch).pixels
        torch.cuda.synchronize()
        want.append(recorder(pixels.clone()))
        torch.cuda.synchronize()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        decoded = Prefetcher(lambda batch: decoder(batch, wait=False), batches, pool, depth=2)
        got = [results for _, results in record_batches(recorder, decoded)]
    for a, b in zip(got, want, strict=True):
        for name in a:
            np.testing.assert_allclose(a[name][0], b[name][0], rtol=1e-2, atol=1e-2)
            assert (a[name][1] == b[name][1]).mean() > 0.98


def test_the_device_decoder_refuses_torchvision_decode():
    from actindex.pipeline.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="--decode torchvision gives Pillow's pixels exactly"):
        GpuDecoder(Preprocessing(decode="torchvision"), "cpu")
