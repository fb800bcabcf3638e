"""Progress in a batch log (stderr not a terminal): one line every N seconds, and one at the end."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

from typer.testing import CliRunner

from actindex.jobs.cli import app
from actindex.jobs.indexing import _progress


def test_a_job_without_a_terminal_logs_progress_lines(natural_dataset, tmp_path):
    # Slow sleeps a second per forward: 4 shards of one batch make the run last over 4 s, a line every 0.4 s
    command = [
        "index", str(natural_dataset), "--out", str(tmp_path / "idx"),
        "--model", "python:tests.faults:Slow", "--trust-code", "--layers", "layer4", "--resize", "32",
        "--crop", "32", "--batch-size", "4", "--shard-size", "4", "--executor", "local",
        "--progress-every", "0.4",
    ]  # fmt: skip
    done = CliRunner().invoke(app, command)  # in this process: its stderr is no terminal either
    assert done.exit_code == 0, done.output
    logged = [line for line in done.stderr.splitlines() if line.startswith("actindex: ")]
    plan = [line for line in logged if " shards, " not in line]  # what the run computes: said first
    assert plan[0].startswith("actindex: model python:tests.faults:Slow") and logged[: len(plan)] == plan
    lines = logged[len(plan) :]
    assert len(lines) >= 5, done.stderr
    pattern = re.compile(r"actindex: (\d+)/4 shards, (\d+)/14 images")
    counts = [tuple(map(int, pattern.match(line).groups())) for line in lines]
    assert counts == sorted(counts) and counts[-1] == (4, 14)  # never backwards, complete at the end
    assert re.search(r", ETA (\d+:\d\d:\d\d|-)$", lines[-2])  # a periodic line
    assert re.fullmatch(
        r"actindex: 4/4 shards, 14/14 images, [\d.,]+ images/s after start-up; done in [\d.]+ s", lines[-1]
    )
    assert "━" not in done.stderr  # no progress bar drawn into a log


def test_progress_lines_show_start_up_rates_and_a_stall(monkeypatch):
    now = time.time()  # frozen: each line's seconds are exact however long this test is paused between lines
    monkeypatch.setattr("actindex.jobs.indexing.time", SimpleNamespace(time=lambda: now))
    progress = _progress(True, images=100, shards=4, every=30.0, started=now - 12)
    assert (
        progress.line()
        == "actindex: 0/4 shards, 0/100 images; starting (loading the model, starting workers) for 12 s"
    )
    progress.images(25)
    progress.shard()
    # too short a window for a rate: "-", and no ETA from it
    assert progress.line() == "actindex: 1/4 shards, 25/100 images, - images/s after start-up, ETA -"
    progress.first = (now - 10, 5)  # 20 images in the 10 s since start-up ended
    progress.last_change = now - 45
    line = progress.line()
    assert line.startswith("actindex: 1/4 shards, 25/100 images, 2.0 images/s after start-up, ETA 0:00:3")
    assert "nothing finished for 45 s" in line
