"""Progress on stderr, shared by the commands: on a terminal a rich bar, otherwise (a batch job's log) one
line every `--progress-every` seconds and one at the end.

    with ReportProgress(True, images=20, crops=9_720, every=30.0, maps=9_720, maps_label="projections") as p:
        write_report(plan, p.advance)     # advance("images", n), then ("maps", n), then ("crops", n)

With no terminal the report logs, as `actindex index` does (jobs.indexing._progress):

    actindex: masks: 16/20 images through the model, - images/s, ETA -; then 9,720 projections, 9,720 crops
    actindex: 2,210/9,720 projections, 41.2/s, ETA 0:03:02; then 9,720 crops
    actindex: 4,128/9,720 crops, 152.3 crops/s, ETA 0:00:37
    actindex: 9,720/9,720 crops; done in 66.1 s

A rate measured over less than MIN_RATE_SECONDS says more about the clock than the work: it is shown as "-".
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from actindex.pipeline.options import Option

MIN_RATE_SECONDS = 3.0  # a rate over a shorter window says more about the clock than the job: shown as "-"
EVERY = 30.0  # seconds between progress lines, by default
PROGRESS_EVERY = Option("With no terminal: seconds between progress lines.", min=0.1, unit="seconds")


def rate(count: int, seconds: float) -> float | None:
    """count / seconds; None for a window too short to measure (MIN_RATE_SECONDS)."""
    return count / seconds if count > 0 and seconds >= MIN_RATE_SECONDS else None


def duration(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LogLines:
    """A daemon thread printing `line()` to stderr every `every` seconds until `stop()`."""

    def __init__(self, line: Callable[[], str], every: float):
        self.line, self.every = line, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="actindex-progress", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Returns once no line is being printed: a periodic line comes before the last one, never after."""
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            print(self.line(), file=sys.stderr, flush=True)


class Shown:
    """Progress shown on stderr while a `with` block runs: on a terminal the subclass's rich bar
    (`_start_bar`, which sets `self.bar`); otherwise `line()` every `every` seconds and `line(final=True)`
    at the end, unless the block raised. Disabled: nothing. Subclasses set `enabled`, `terminal`, `every`."""

    enabled: bool
    terminal: bool
    every: float

    def __enter__(self):
        if self.enabled and self.terminal:
            self._start_bar()
        elif self.enabled:
            self.log = LogLines(self.line, self.every)
            self.log.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and self.terminal:
            self.bar.stop()
        elif self.enabled:
            self.log.stop()
            if exc[0] is None:
                print(self.line(final=True), file=sys.stderr, flush=True)

    def line(self, final: bool = False) -> str:
        raise NotImplementedError

    def _start_bar(self) -> None:
        raise NotImplementedError


STAGES = ("images", "maps", "crops")  # the report's stages, in order


class ReportProgress(Shown):
    """`actindex report`'s progress: the images through the model for the masks, then the projections and
    occlusion maps saved, then the crops saved. Disabled: nothing."""

    def __init__(
        self, enabled: bool, images: int, crops: int, every: float, maps: int = 0, maps_label: str = "maps"
    ):
        self.enabled, self.every, self.terminal = enabled, every, sys.stderr.isatty()
        self.maps_label = maps_label  # what the maps are: "projections", "projections and occlusion maps"
        self.total = {"images": images, "maps": maps, "crops": crops}
        self.done = dict.fromkeys(STAGES, 0)
        self.started = time.time()
        first = next(stage for stage in STAGES if self.total[stage] or stage == "crops")
        self.stage_started = {stage: self.started if stage == first else None for stage in STAGES}
        self.lock = threading.Lock()

    def advance(self, stage: str, n: int) -> None:
        with self.lock:
            self.done[stage] += n
            if self.done[stage] >= self.total[stage] and stage != "crops":  # the next stage with work starts
                later = STAGES[STAGES.index(stage) + 1 :]
                following = next(s for s in later if self.total[s] or s == "crops")
                self.stage_started[following] = self.stage_started[following] or time.time()
        if self.enabled and self.terminal:
            self.bar.update(self.tasks[stage], completed=self.done[stage])

    def line(self, final: bool = False) -> str:
        """The batch-log line for now."""
        with self.lock:
            now = time.time()
            if final:
                crops = self.total["crops"]
                return f"actindex: {self.done['crops']:,}/{crops:,} crops; done in {now - self.started:.1f} s"
            stage = [s for s in STAGES if self.stage_started[s] is not None][-1]
            done, total = self.done[stage], self.total[stage]
            per_second = rate(done, now - self.stage_started[stage])
            speed = "-" if per_second is None else f"{per_second:,.1f}"
            eta = duration((total - done) / per_second) if per_second else "-"
            if stage == "crops":
                return f"actindex: {done:,}/{total:,} crops, {speed} crops/s, ETA {eta}"
            then = f"then {self.total['crops']:,} crops"
            if stage == "maps":
                return f"actindex: {done:,}/{total:,} {self.maps_label}, {speed}/s, ETA {eta}; {then}"
            if self.total["maps"]:
                then = f"then {self.total['maps']:,} {self.maps_label}, {self.total['crops']:,} crops"
            images = f"{done:,}/{total:,} images through the model, {speed} images/s, ETA {eta}"
            return f"actindex: masks: {images}; {then}"

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), refresh_per_second=4,
        )  # fmt: skip
        self.bar.start()
        self.tasks = {}
        if self.total["images"]:
            self.tasks["images"] = self.bar.add_task(
                "masks: images through the model", total=self.total["images"]
            )
        if self.total["maps"]:
            self.tasks["maps"] = self.bar.add_task(f"drawing {self.maps_label}", total=self.total["maps"])
        self.tasks["crops"] = self.bar.add_task("drawing crops", total=self.total["crops"])
