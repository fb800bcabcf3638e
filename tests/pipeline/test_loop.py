"""The model loop every worker runs: decoding ahead in order, results per batch, out-of-memory splits,
one retry, failed images never reaching the model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from actindex.pipeline.loop import DecodedBatch, Prefetcher, Ready, record_batches
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.recorder import ActivationRecorder

WAIT_S = 120  # for threads to start on a loaded machine (a bound for failures, not a timing assertion)


class SumRecorder:
    """A stand-in model: unit 0 is each image's pixel sum, unit 1 its first pixel; counts its calls."""

    units = {"layer": 2}
    device = torch.device("cpu")

    def __init__(self, fits: int = 1_000, fail_once: bool = False, oom_on=None):
        self.fits, self.fail_once, self.oom_on = fits, fail_once, oom_on
        self.calls: list[int] = []

    def submit(self, pixels: torch.Tensor) -> Ready:
        self.calls.append(len(pixels))
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("transient")
        flat = pixels.reshape(len(pixels), -1).to(torch.int64)
        if len(pixels) > self.fits or (self.oom_on is not None and (flat[:, 0] == self.oom_on).any()):
            raise torch.OutOfMemoryError("injected: out of memory")
        act = torch.stack([flat.sum(1), flat[:, 0]], 1).float().numpy()
        return Ready({"layer": (act, np.zeros(act.shape, dtype=np.int32))})


def batch(values: list[int], ok: list[bool] | None = None) -> DecodedBatch:
    n = len(values)
    pixels = torch.tensor(values, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return DecodedBatch(
        pixels=pixels,
        ok=np.array(ok if ok is not None else [True] * n),
        width=np.full(n, 2, dtype=np.int32),
        height=np.full(n, 2, dtype=np.int32),
        error=np.array(["" if good else "corrupt: x" for good in (ok or [True] * n)], dtype=object),
        on_device=np.zeros(n, dtype=bool),
    )


def test_prefetcher_starts_at_once_and_yields_in_order():
    started = []
    gate = threading.Event()

    def decode(items):
        started.append(items[0])
        if items[0] == 0:
            gate.wait(5)  # the first batch is the slowest: order must still hold
        return [i * 10 for i in items]

    with ThreadPoolExecutor(2) as pool:
        fetched = Prefetcher(decode, [[0, 1], [2, 3], [4]], pool, depth=2)
        deadline = time.time() + WAIT_S
        while len(started) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert sorted(started) == [0, 2]  # two batches decoding before anyone iterates
        gate.set()
        assert list(fetched) == [[0, 10], [20, 30], [40]]


def test_results_cover_ok_rows_and_failed_images_never_reach_the_model():
    recorder = SumRecorder()
    batches = [batch([1, 2, 3], [True, False, True]), batch([4, 5], [False, False]), batch([6])]
    out = list(record_batches(recorder, batches))
    assert recorder.calls == [2, 1]  # the all-failed batch ran nothing
    assert [b for b, _ in out] == batches
    np.testing.assert_array_equal(out[0][1]["layer"][0][:, 1], [1, 3])
    assert out[1][1]["layer"][0].shape == (0, 2)
    np.testing.assert_array_equal(out[2][1]["layer"][0][:, 0], [6 * 12])


def test_out_of_memory_splits_until_it_fits_and_fails_only_the_image_that_never_does():
    recorder = SumRecorder(fits=2, oom_on=7)
    decoded = batch([1, 2, 3, 7, 5])
    [(got, results)] = list(record_batches(recorder, [decoded]))
    np.testing.assert_array_equal(results["layer"][0][:, 1], [1, 2, 3, 5])
    assert got.ok.tolist() == [True, True, True, False, True]
    assert got.error[3].startswith("out of memory: injected")


def test_other_errors_are_retried_once_then_raised():
    recorder = SumRecorder(fail_once=True)
    [(_, results)] = list(record_batches(recorder, [batch([1, 2])]))
    assert recorder.calls == [2, 2] and results["layer"][0][:, 1].tolist() == [1, 2]

    class Broken(SumRecorder):
        def submit(self, pixels):
            raise RuntimeError("deterministic")

    with pytest.raises(RuntimeError, match="deterministic"):
        list(record_batches(Broken(), [batch([1])]))


def test_the_loop_gives_what_the_recorder_gives_batch_by_batch():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    prep = Preprocessing(resize=32, crop=32)
    recorder = ActivationRecorder(model, ["layer2", "fc"], prep)
    rng = np.random.default_rng(0)
    batches = [batch([0] * 3) for _ in range(3)]
    for b in batches:
        b.pixels = torch.from_numpy(rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    with ThreadPoolExecutor(1) as pool:
        looped = list(record_batches(recorder, Prefetcher(lambda b: b, batches, pool)))
    for b, (_, got) in zip(batches, looped, strict=True):
        want = recorder(b.pixels.numpy())
        for layer in ("layer2", "fc"):
            np.testing.assert_array_equal(got[layer][0], want[layer][0])
            np.testing.assert_array_equal(got[layer][1], want[layer][1])
