"""`actindex contributions`: the planted wiring of a two-layer net, kept in the index's contributions table
and read back through the view, the catalog (built_from, feeds) and the API; a job killed twice resumes to
the table of an uninterrupted run; a rerun with nothing to do does nothing; Ray equals the local executor;
an index on S3 and a --store topk index work; weights changed since indexing are refused in one line; the
backward passes are one per unit sharing an image within a group, never one per (unit, image)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from actindex.jobs.contributions import GROUP_UNITS, ContributionsRequest, run_contributions
from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.pipeline.layout import IndexLayout
from actindex.pipeline.preprocess import Preprocessing
from actindex.queries.api import Index
from actindex.queries.db import connect
from tests.conftest import PLANTED_PREP
from tests.jobs.test_cli import invoke
from tests.jobs.test_resume import make_images

REPO = Path(__file__).parents[2]
NODE_PLUGIN = REPO / "tests" / "node_plugin"
ONE_BY_ONE = "python:tests.pipeline.attribution.conftest:OneByOne"


def planted_request(source: str, out: str, **kwargs) -> IndexRequest:
    """OneByOne (layer2 unit 0 = ReLU(2a + b) of layer1 channels a = b = ReLU(R)) over the planted images."""
    options = dict(
        model=ONE_BY_ONE, layers=("relu1", "relu2"), preprocessing=PLANTED_PREP, trust_code=True, k=3,
        shard_size=4, executor="local", progress=False,
    )  # fmt: skip
    return IndexRequest(source=source, out=out, **{**options, **kwargs})


def contributions_request(index: str, **kwargs) -> ContributionsRequest:
    options = dict(layer="relu2", k=3, executor="local", trust_code=True, progress=False)
    return ContributionsRequest(index=index, **{**options, **kwargs})


def table(index) -> list[tuple]:
    rows = connect(index).sql("SELECT * FROM contributions ORDER BY layer, unit, src_layer, rank").fetchall()
    return rows


@pytest.fixture(scope="module")
def planted(planted_dataset, tmp_path_factory) -> Path:
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("contributions_planted") / "idx"
    run_index(planted_request(str(folder), str(out)))
    return out


def test_the_planted_wiring_is_the_table(planted):
    summary = run_contributions(contributions_request(str(planted)))  # --from: the indexed layer below
    assert (summary.source, summary.units, summary.groups, summary.computed) == ("relu1", 2, 1, 1)
    index = Index(planted)
    found = index.contributions("relu2", 0).to_pylist()
    assert [(r["src_layer"], r["src_unit"], r["rank"]) for r in found] == [
        ("relu1", 0, 1), ("relu1", 1, 2), ("relu1", 2, 3), ("relu1", 3, 4)
    ]  # fmt: skip
    np.testing.assert_allclose([r["share"] for r in found[:2]], [2 / 3, 1 / 3], rtol=1e-6)
    assert [r["score"] for r in found[2:]] == [0.0, 0.0] and found[0]["score"] == pytest.approx(
        2 * found[1]["score"], rel=1e-6
    )
    assert [r["src_unit"] for r in index.contributions("relu2", 1, n=1).to_pylist()] == [2]  # unit 1 = c
    built = index.sql("SELECT src_unit, share FROM built_from('relu2', 0) WHERE share > 0").to_pylist()
    assert [row["src_unit"] for row in built] == [0, 1]
    feeds = index.feeds("relu1", 0).to_pylist()
    assert [(row["layer"], row["unit"]) for row in feeds][0] == ("relu2", 0)
    assert index.feeds("relu1", 2).to_pylist()[0]["unit"] == 1
    with pytest.raises(Exception, match="no contributions of relu1 unit 0 yet"):
        index.contributions("relu1", 0)


def test_a_rerun_with_nothing_to_do_does_nothing(planted):
    run_contributions(contributions_request(str(planted)))
    markers = sorted((IndexLayout(planted).root / "_contributions").rglob("*.json"))
    before = {path: path.stat().st_mtime_ns for path in markers}
    summary = run_contributions(contributions_request(str(planted)))
    assert summary.computed == 0 and summary.reused == 1 and summary.backward_passes == 0
    assert {path: path.stat().st_mtime_ns for path in markers} == before


def test_another_k_is_refused_unless_overwrite(planted):
    run_contributions(contributions_request(str(planted)))
    result = invoke("contributions", planted, "--layer", "relu2", "--k", "2", "--trust-code", "--no-progress",
                    "--executor", "local")  # fmt: skip
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "computed with k=3, top=16" in lines[0], (
        result.output
    )
    assert run_contributions(contributions_request(str(planted), k=2, overwrite=True)).computed == 1
    run_contributions(contributions_request(str(planted), overwrite=True))  # back to k=3 for the others


def test_weights_changed_since_indexing_are_refused_in_one_line(planted_dataset, tmp_path):
    from tests.pipeline.attribution.conftest import OneByOne

    weights = tmp_path / "one_by_one.pth"
    torch.save(OneByOne().state_dict(), weights)
    out = tmp_path / "idx"
    run_index(planted_request(str(planted_dataset[0]), str(out), weights=str(weights)))
    changed = OneByOne().state_dict()
    changed["conv2.bias"] += 1.0
    torch.save(changed, weights)
    result = invoke("contributions", out, "--layer", "relu2", "--trust-code", "--no-progress",
                    "--executor", "local")  # fmt: skip
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "changed since indexing" in lines[0] and "contributions need the weights" in lines[0]
    assert not table(out)


# ------------------------------------------------------------------------- a model with many groups

RESNET_PREP = Preprocessing(resize=36, crop=32)


@pytest.fixture(scope="module")
def resnet_index(tmp_path_factory) -> Path:
    """resnet18 (random weights) over 12 images at 32 px: layer2's 128 units make 8 groups."""
    folder = make_images(tmp_path_factory.mktemp("contributions_images") / "images", 12)
    out = tmp_path_factory.mktemp("contributions_resnet") / "idx"
    run_index(
        IndexRequest(
            source=str(folder), out=str(out), model="resnet18", weights="random", layers=("layer1", "layer2"),
            preprocessing=RESNET_PREP, k=3, shard_size=6, executor="local", progress=False,
        )
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def resnet_reference(resnet_index, tmp_path_factory) -> tuple[list, object]:
    """The uninterrupted run's table, and its summary."""
    summary = run_contributions(contributions_request(str(resnet_index), layer="layer2", trust_code=False))
    return table(resnet_index), summary


def copy_index(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("contributions", "_contributions", ".lock"))
    return target


def test_backward_passes_are_one_per_unit_sharing_an_image_in_a_group(resnet_index, resnet_reference):
    rows, summary = resnet_reference
    assert summary.groups == 128 // GROUP_UNITS and summary.units == 128 and len(rows) == 128 * 16
    top = connect(resnet_index).sql("SELECT unit, image_id FROM topk WHERE layer = 'layer2'").fetchall()
    sharing = Counter((unit // GROUP_UNITS, image_id) for unit, image_id in top)
    expected = sum(max(n for (g, _), n in sharing.items() if g == group) for group in range(summary.groups))
    assert summary.backward_passes == expected  # one per unit that shares an image, per group
    assert summary.backward_passes < len(top) and summary.forward_passes == summary.groups


@pytest.mark.slow
def test_killed_twice_then_rerun_gives_the_uninterrupted_table(resnet_index, resnet_reference, tmp_path):
    out = copy_index(resnet_index, tmp_path / "idx")
    command = [sys.executable, "-m", "actindex", "contributions", str(out), "--layer", "layer2", "--k", "3",
               "--executor", "local", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{NODE_PLUGIN}{os.pathsep}{REPO}"}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # as this process's reference: the same bits
    for groups in (2, 3):  # the first run hangs after writing its 2nd group, the second after its 3rd
        pause = tmp_path / f"pause-{groups}"
        pause.mkdir()
        paused = {**env, "ACTINDEX_TEST_PAUSE_DIR": str(pause), "ACTINDEX_TEST_PAUSE_GROUPS": str(groups)}
        proc = subprocess.Popen(
            command, env=paused, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 300
        while not list(pause.iterdir()) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert list(pause.iterdir()), proc.communicate()[1][-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = len(list((out / "_contributions").rglob("group-*.json")))
    assert 0 < kept < 8  # killed mid-run, twice: some groups committed, not all
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{kept} kept from an earlier run" in done.stdout, done.stdout
    assert table(out) == resnet_reference[0]
    listed = {f for m in IndexLayout(out).contributions_markers() for f in m["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in (out / "contributions").rglob("*.parquet")}
    assert on_disk == listed  # the killed attempts' files are gone


@pytest.mark.slow
def test_ray_equals_the_local_executor(ray_local, resnet_index, resnet_reference, tmp_path):
    out = copy_index(resnet_index, tmp_path / "idx")
    request = contributions_request(str(out), layer="layer2", trust_code=False, executor="ray")
    summary = run_contributions(request)
    assert summary.computed == 8
    assert table(out) == resnet_reference[0]  # the actors run torch on the node's 2 CPUs, as this process


def test_an_index_on_s3_with_only_the_topk_table(s3_endpoint, planted_dataset):
    from tests.jobs.conftest import BUCKET

    out = f"s3://{BUCKET}/contributions/topk-only/"
    run_index(planted_request(str(planted_dataset[0]), out, store="topk"))
    summary = run_contributions(contributions_request(out))
    assert summary.computed == 1
    found = Index(out).contributions("relu2", 0).to_pylist()
    assert [r["src_unit"] for r in found[:2]] == [0, 1]
    np.testing.assert_allclose([r["share"] for r in found[:2]], [2 / 3, 1 / 3], rtol=1e-6)
