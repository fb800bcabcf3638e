"""`actindex report` says what it does: its plan in one line before drawing, progress lines in a batch log,
and every refusal before that line and before any file is written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actindex.jobs.progress import ReportProgress
from tests.jobs.test_cli import invoke

PLAN = re.compile(
    r"actindex: drawing (\d+) units \(layer4 \1\): (\d+) crops with highlight masks, the model over "
    r"(\d+) images; about .+ on \d+ threads?\. Faster: --units \(fewer units\), --mask none \(plain "
    r"crops, about .+\)"
)


@pytest.fixture(scope="module")
def slow_index(natural_dataset, tmp_path_factory) -> Path:
    """An index of tests.faults.Slow (resnet18, a second per forward): its report's masks take over a
    second in the model, whatever the machine."""
    out = tmp_path_factory.mktemp("slow") / "idx"
    result = invoke(
        "index", natural_dataset, "--out", out, "--model", "python:tests.faults:Slow", "--trust-code",
        "--layers", "layer4", "--resize", "64", "--crop", "64", "--executor", "local", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_with_stderr_on_a_pipe_the_plan_comes_at_once_then_progress_lines(slow_index, tmp_path):
    site = tmp_path / "site"
    command = [
        sys.executable, "-m", "actindex", "report", str(slow_index), "--out", str(site), "--units", "0-7",
        "--k", "2", "--trust-code", "--progress-every", "0.2", "--no-projections",
    ]  # fmt: skip  # the masks' stage and the crops' (tests/queries/test_report_views.py: the maps')
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as report:
        plan = report.stderr.readline().strip()
        # the model sleeps a second per batch after this line: nothing of the site can be written yet
        drawn_yet = (site / "index.html").exists()
        rest, _ = report.communicate(timeout=300)[1], None
    assert report.returncode == 0, rest
    assert PLAN.fullmatch(plan), plan
    units, crops, images = PLAN.fullmatch(plan).groups()
    assert (units, crops) == ("8", "16") and 2 <= int(images) <= 14 and not drawn_yet
    lines = rest.splitlines()
    assert lines[-1].startswith("actindex: 16/16 crops; done in ")
    periodic = lines[:-1]  # a line every 0.2 s while the model sleeps its second
    assert periodic and all(line.startswith("actindex: ") for line in periodic), rest
    assert re.fullmatch(
        rf"actindex: masks: \d+/{images} images through the model, - images/s, ETA -; then 16 crops",
        periodic[0],
    )
    assert "━" not in rest  # no bar drawn into a pipe


def test_progress_lines_say_the_stage_its_rate_and_what_is_left():
    progress = ReportProgress(True, images=20, crops=900, every=30.0)
    progress.started = progress.stage_started["images"] = time.time() - 10
    progress.advance("images", 10)
    assert progress.line() == (
        "actindex: masks: 10/20 images through the model, 1.0 images/s, ETA 0:00:10; then 900 crops"
    )
    progress.advance("images", 10)
    progress.stage_started["crops"] = time.time() - 4
    progress.advance("crops", 200)
    assert progress.line() == "actindex: 200/900 crops, 50.0 crops/s, ETA 0:00:14"
    assert re.fullmatch(r"actindex: 200/900 crops; done in 1\d\.\d s", progress.line(final=True))


def test_the_maps_have_a_stage_between_the_masks_and_the_crops():
    progress = ReportProgress(True, images=20, crops=900, every=30.0, maps=900, maps_label="projections")
    progress.started = progress.stage_started["images"] = time.time() - 10
    progress.advance("images", 10)
    assert progress.line() == (
        "actindex: masks: 10/20 images through the model, 1.0 images/s, ETA 0:00:10; then 900 projections, "
        "900 crops"
    )
    progress.advance("images", 10)
    progress.stage_started["maps"] = time.time() - 5
    progress.advance("maps", 100)
    assert progress.line() == "actindex: 100/900 projections, 20.0/s, ETA 0:00:40; then 900 crops"
    progress.advance("maps", 800)
    progress.stage_started["crops"] = time.time() - 4
    progress.advance("crops", 200)
    assert progress.line() == "actindex: 200/900 crops, 50.0 crops/s, ETA 0:00:14"


def _weights_gone(index: Path, tmp_path: Path) -> Path:
    """A copy of `index` whose run.json names a weights file that is not there."""
    copy = tmp_path / "gone-idx"
    shutil.copytree(index, copy)
    manifest = json.loads((copy / "run.json").read_text())
    manifest["params"]["weights"] = str(tmp_path / "planted.pth")
    (copy / "run.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    ("case", "args", "says"),
    [
        ("a folder of other files", ["--trust-code"], "not an actindex report"),
        ("weights gone", ["--trust-code"], "which is not there now"),
        ("a model that runs code", [], "--trust-code"),
        ("a unit no layer has", ["--trust-code", "--units", "99"], "out of range of every layer"),
        ("a mask level of 0", ["--trust-code", "--mask-threshold", "0"], "--mask-threshold 0.0"),
        ("an unknown layer", ["--trust-code", "--layers", "relu9"], "indexed layers: relu1, relu2, head"),
    ],
)
def test_a_refusal_comes_before_the_plan_and_writes_nothing(planted_cli_index, tmp_path, case, args, says):
    index, _ = planted_cli_index
    if case == "weights gone":
        index = _weights_gone(index, tmp_path)
    site = tmp_path / "site"
    if case == "a folder of other files":
        site.mkdir()
        (site / "notes.txt").write_text("mine")
    result = invoke("report", index, "--out", site, "--units", "0", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert says in result.output and "drawing" not in result.output
    written = sorted(p.name for p in site.rglob("*")) if site.exists() else []
    assert written == (["notes.txt"] if case == "a folder of other files" else [])
