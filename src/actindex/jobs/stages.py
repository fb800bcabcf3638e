"""How a worker splits its host between decoding and finishing, and what each stage did: timed per batch,
resized by where the batches wait.

    clock = StageClock()                                  # one per worker; thread-safe
    split = StageSplit(cores=16)                          # decode 8, finish 8 (or fixed: decode=, finish=)
    decode_pool = StagePool("decode", split.decode, clock, most=16)
    future = decode_pool.submit(decode, batch)            # runs when one of the pool's `threads` is free
    with clock.busy("model", images=32): ...              # a stage's work on one batch
    clock.wait("model_for_decode", seconds)               # where a batch (or the model) waited, and how long
    if split.update(clock): decode_pool.resize(split.decode); finish_pool.resize(split.finish)
    shard_stages = clock.take()                           # since the last take: in each ShardResult

    totals = StageTotals()                                # the driver: every result's stages, summed
    totals.add(result.stages)
    run_json["stages"] = totals.record()                  # threads, busy seconds, rates, waits, held_by
    summary_line(run_json["stages"])                      # "stages (images/s while busy): decode ..."

The stages: decode (files to pixels: Pillow, or nvjpeg on the model's device), model (the forward and its
reductions, on the spec's fixed torch threads), finish (ordering every unit, encoding and writing a shard's
files). Only the decode and finishing threads move (StageSplit's rule); a result never depends on them.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

STAGES = ("decode", "model", "finish")
WAITS = (
    "model_for_decode",  # the model waited for a decoded batch: decoding is slower
    "model_for_shard",  # the model was free and no shard had come: its shard slots were being finished
    "decode_for_thread",  # a batch waited for a decode thread
    "finish_for_thread",  # a shard's finishing job (a layer, a file) waited for a finishing thread
)


class StageClock:
    """Per stage: images and busy seconds (summed over its threads); per kind of wait (WAITS): seconds.
    Cumulative; `take()` gives what was added since the last take."""

    def __init__(self):
        self._lock = threading.Lock()
        self.images = dict.fromkeys(STAGES, 0)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.waits = dict.fromkeys(WAITS, 0.0)
        self._taken = self._snapshot()

    def add(self, stage: str, images: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.images[stage] += images
            self.seconds[stage] += seconds

    @contextmanager
    def busy(self, stage: str, images: int = 0):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, images, time.perf_counter() - started)

    def wait(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.waits[kind] += seconds

    def _snapshot(self) -> dict:
        return {"images": dict(self.images), "seconds": dict(self.seconds), "waits": dict(self.waits)}

    def take(self) -> dict:
        """{"images", "seconds", "waits"}: each added since the last take."""
        with self._lock:
            now = self._snapshot()
            taken, self._taken = self._taken, now
        return {part: {k: v - taken[part][k] for k, v in values.items()} for part, values in now.items()}


class StagePool:
    """A thread pool whose concurrency changes while it runs: `threads` of its jobs run at once, the
    others wait for one (that wait is timed: `<name>_for_thread`), and the jobs' run time is the stage's
    busy time. `most` threads exist at most."""

    def __init__(self, name: str, threads: int, clock: StageClock, most: int):
        self.name, self.threads, self.clock = name, threads, clock
        self._pool = ThreadPoolExecutor(max(most, threads), thread_name_prefix=f"actindex-{name}")
        self._free = threading.Condition()
        self._running = 0

    def resize(self, threads: int) -> None:
        with self._free:
            self.threads = threads
            self._free.notify_all()

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(self._run, time.perf_counter(), fn, args)

    def _run(self, queued: float, fn, args):
        with self._free:
            while self._running >= self.threads:
                self._free.wait()
            self._running += 1
        started = time.perf_counter()
        self.clock.wait(f"{self.name}_for_thread", started - queued)
        try:
            return fn(*args)
        finally:
            self.clock.add(self.name, seconds=time.perf_counter() - started)
            with self._free:
                self._running -= 1
                self._free.notify()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class StageSplit:
    """How many of a worker's `cores` its decoding and finishing threads get: decode d, finish
    max(1, cores - d); the model's torch threads are the run spec's, fixed. It starts at d = cores // 2
    (1 with nvjpeg) unless the run fixes a stage (--decode-threads, --finish-threads: then nothing moves).

    The rule, every WINDOW batches through the model, from where the model waited in that window:
      - for decoded batches, longer than STARVED of the window and longer than for shards: d + 1, up to
        `decode_most` (cores; 1 with nvjpeg, which decodes a batch in one call);
      - for its next shard (every shard slot held by shards being finished), longer than STARVED of the
        window and longer than for decoded batches: d - 1, down to 1;
      - otherwise d stays.
    One thread a window, so a stage that was starved only briefly does not swing the split."""

    WINDOW = 8  # batches through the model between decisions
    STARVED = 0.05  # of the window's wall time: shorter waits are noise

    def __init__(
        self, cores: int, decode: int | None = None, finish: int | None = None, decode_most: int | None = None
    ):
        self.cores = max(1, cores)
        self.decode_most = max(1, min(decode_most or self.cores, self.cores))
        self.fixed = decode is not None or finish is not None
        if decode is None:
            decode = max(1, self.cores - finish) if finish else max(1, self.cores // 2)
            decode = min(decode, self.decode_most)
        self.decode = decode
        self.finish = finish or max(1, self.cores - decode)
        self.start = {"decode": self.decode, "finish": self.finish}
        self._batches, self._since, self._waits = 0, time.perf_counter(), {}

    def update(self, clock: StageClock) -> bool:
        """Count one batch through the model; every WINDOW batches apply the rule. True when the split
        changed (the caller resizes its pools)."""
        self._batches += 1
        if self.fixed or self._batches % self.WINDOW:
            return False
        now, waits = time.perf_counter(), dict(clock.waits)
        window, self._since = now - self._since, now
        starved = waits["model_for_decode"] - self._waits.get("model_for_decode", 0.0)
        blocked = waits["model_for_shard"] - self._waits.get("model_for_shard", 0.0)
        self._waits = waits
        decode = self.decode
        if starved > max(blocked, self.STARVED * window):
            decode = min(self.decode + 1, self.decode_most)
        elif blocked > max(starved, self.STARVED * window):
            decode = max(self.decode - 1, 1)
        if decode == self.decode:
            return False
        self.decode, self.finish = decode, max(1, self.cores - decode)
        return True

    def threads(self) -> dict:
        """{"decode": [at start, now], "finish": [at start, now]}."""
        return {"decode": [self.start["decode"], self.decode], "finish": [self.start["finish"], self.finish]}


class StageTotals:
    """The driver's sum of its workers' stages (each ShardResult's `stages`): what run.json records."""

    def __init__(self):
        self.images = dict.fromkeys(STAGES, 0)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.waits = dict.fromkeys(WAITS, 0.0)
        self.threads: dict[str, dict] = {}  # per worker (its writer): the latest split it reported
        self.model_threads = 0
        self.first: tuple[float, int] | None = None  # (when, images) of the first batch out of the model
        self.last: float | None = None  # when the last shard's files were written
        self.images_done = 0  # images of the shards summed here

    def add(self, stages: dict) -> None:
        if not stages:
            return
        for stage in STAGES:
            self.images[stage] += stages["images"][stage]
            self.seconds[stage] += stages["seconds"][stage]
        for kind in WAITS:
            self.waits[kind] += stages["waits"][kind]
        self.threads[stages["worker"]] = stages["threads"]
        self.model_threads = stages["model_threads"]
        if stages.get("first_batch") and (self.first is None or stages["first_batch"][0] < self.first[0]):
            self.first = tuple(stages["first_batch"])
        self.last = max(self.last or 0.0, stages["written"])
        self.images_done += stages["shard_images"]

    def record(self) -> dict | None:
        """run.json's "stages" (None when no shard was computed)."""
        if not self.threads:
            return None
        record: dict = {"workers": len(self.threads)}
        for stage in STAGES:
            busy = self.seconds[stage]
            record[stage] = {
                "images": self.images[stage],
                "busy_seconds": round(busy, 3),
                # of one thread of the stage (the model: its loop on model_threads torch threads)
                "images_per_second": round(self.images[stage] / busy, 1) if busy > 0 else None,
            }
            if stage != "model":
                splits = [split[stage] for split in self.threads.values()]
                record[stage]["threads"] = {
                    "start": sum(s[0] for s in splits),
                    "final": sum(s[1] for s in splits),
                }
        record["model"]["threads"] = self.model_threads
        record["waits_seconds"] = {kind: round(value, 3) for kind, value in self.waits.items()}
        record.update(self._window())
        record["held_by"] = self._held_by()
        return record

    def _window(self) -> dict:
        """The job's rate from the first batch out of the model to the last shard written (no start-up)."""
        if self.first is None or self.last is None or self.last <= self.first[0]:
            return {"window_seconds": None, "images_per_second": None}
        seconds = self.last - self.first[0]
        return {
            "window_seconds": round(seconds, 3),
            "images_per_second": round((self.images_done - self.first[1]) / seconds, 1),
        }

    def _held_by(self) -> str:
        """The stage the model spent its time on: its own forwards, or waiting for decoding, or for shards
        (whose slots were being finished)."""
        shares = {
            "model": self.seconds["model"],
            "decode": self.waits["model_for_decode"],
            "finish": self.waits["model_for_shard"],
        }
        return max(shares, key=shares.get)


def summary_line(stages: dict) -> str:
    """One line that says where a run's time went and which stage held it."""

    def rate(stage: str) -> str:
        value = stages[stage]["images_per_second"]
        return "-" if value is None else f"{value:,.0f}"

    def threads(stage: str) -> str:
        split = stages[stage]["threads"]
        moved = f" ({split['start']} at start)" if split["start"] != split["final"] else ""
        return f"{split['final']} thread{'s' * (split['final'] != 1)}{moved}"

    model = stages["model"]
    waited = stages["waits_seconds"]
    wall = model["busy_seconds"] + waited["model_for_decode"] + waited["model_for_shard"]
    share = {k: v / wall if wall > 0 else 0.0 for k, v in waited.items()}
    job = stages["images_per_second"]
    return (
        f"stages (images/s while busy): decode {rate('decode')} per thread x {threads('decode')}, "
        f"model {rate('model')} on {model['threads']} torch thread{'s' * (model['threads'] != 1)}, "
        f"finish {rate('finish')} per thread x {threads('finish')}; the model waited "
        f"{share['model_for_decode']:.0%} of its time for decoding, "
        f"{share['model_for_shard']:.0%} for shards; "
        + ("" if job is None else f"{job:,.0f} images/s from the first batch to the last; ")
        + f"held by {stages['held_by']}"
    )
