"""The shard worker on its own: it writes a shard's files and returns what the marker needs plus the
shard's top-k; the driver only commits. Also: the actor plan for a cluster, and the job without Ray or
DuckDB installed (what a GPU box has)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from actindex.jobs.query_bench import LAYER, synthetic_context, synthetic_shard
from actindex.jobs.ray_executor import plan_actors
from actindex.jobs.worker import ShardFinisher
from actindex.pipeline.layout import IndexLayout, commit_marker
from actindex.pipeline.topk import read_topk


def test_the_finisher_writes_the_shard_and_returns_only_the_marker_and_the_top_k(tmp_path):
    context = synthetic_context(tmp_path, k=5)
    rng = np.random.default_rng(3)
    ids = np.array([907, 11, 500, 3, 42, 77], dtype=np.int64)
    task, meta, layers = synthetic_shard(rng, 4, ids)
    meta["ok"][2] = False  # one image failed to decode: an images row, no activations
    meta["error"][2] = "corrupt: broken data stream"
    act, pos = layers[LAYER]
    result = ShardFinisher(context)(task, meta, {LAYER: (act[meta["ok"]], pos[meta["ok"]])})
    layout = IndexLayout(tmp_path)
    assert not layout.completed_shards()  # the finisher never commits: readers see nothing yet
    assert (result.shard, result.images, result.ok, result.activation_rows) == (4, 6, 5, 5 * 2048)
    assert sorted(result.files) == sorted(
        [
            f"images/shard-00004.{result.attempt}.parquet",
            f"activations/layer=layer4/shard-00004.{result.attempt}.parquet",
            f"_topk/shard-00004.{result.attempt}.parquet",
        ]
    )
    assert result.writer == {"host": os.uname().nodename, "pid": os.getpid()}
    images = pq.read_table(tmp_path / result.files[0]).to_pylist()
    assert [r["image_id"] for r in images] == ids.tolist() and images[2]["error"].startswith("corrupt")
    ok_ids, ok_act = ids[meta["ok"]], act[meta["ok"]]
    top = result.topk[LAYER]
    for unit in (0, 1000, 2047):
        want = sorted(range(len(ok_ids)), key=lambda i: (-ok_act[i, unit], ok_ids[i]))
        assert top.image_ids[unit].tolist() == ok_ids[want].tolist()
        assert top.values[unit].tolist() == ok_act[want, unit].tolist()
    # the partial on disk is the same top-k, in the topk table's schema
    on_disk = read_topk(pq.read_table(tmp_path / result.files[2]), LAYER, 2048, 7)
    for name in ("values", "image_ids", "positions", "boxes"):
        np.testing.assert_array_equal(getattr(on_disk, name), getattr(top, name))
    assert (top.boxes[:, :, 2] > top.boxes[:, :, 0]).all()  # real boxes in original pixels
    commit_marker(layout, result.marker())
    assert layout.completed_shards()[4]["files"] == result.files


def nodes(*resources: dict) -> list[dict]:
    return [
        {"NodeID": f"n{i}", "NodeManagerHostname": f"host{i}", "Alive": True, "Resources": r}
        for i, r in enumerate(resources)
    ]


def test_actor_plan_uses_the_real_resources_and_leaves_out_nodes_without_cpus():
    cluster = nodes({"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 16.0})  # a KubeRay head with num-cpus 0
    slots = plan_actors(cluster, "cpu", None)
    assert [(s.node_id, s.num_cpus, s.threads) for s in slots] == [("n1", 1.0, 1), ("n2", 1.0, 16)]
    spread = plan_actors(cluster, "cpu", 4)  # --workers 4: two per usable node, sharing its cores
    assert [(s.node_id, s.num_cpus, s.threads) for s in spread] == [
        ("n1", 0.5, 1), ("n1", 0.5, 1), ("n2", 1.0, 8), ("n2", 1.0, 8),
    ]  # fmt: skip
    gpus = plan_actors(nodes({"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0}), "cuda", None)
    assert [(s.node_id, s.num_gpus, s.num_cpus, s.threads) for s in gpus] == [("n0", 1, 1.0, 8)] * 2
    assert plan_actors(nodes({"CPU": 0.0}), "cpu", None) == []
    dead = nodes({"CPU": 4.0}, {"CPU": 4.0})
    dead[0]["Alive"] = False
    assert [s.node_id for s in plan_actors(dead, "cpu", None)] == ["n1"]


BLOCK_RAY_AND_DUCKDB = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'duckdb'):
            raise ImportError(f'{name} is not installed on this machine')
sys.meta_path.insert(0, Block())
"""


def test_the_job_runs_where_neither_ray_nor_duckdb_is_installed(natural_dataset, tmp_path):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(BLOCK_RAY_AND_DUCKDB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(Path.cwd())])}
    command = [sys.executable, "-m", "actindex", "index", str(natural_dataset)]
    command += ["--out", str(tmp_path / "idx"), "--model", "resnet18", "--layers", "layer4"]
    command += ["--weights", "random", "--resize", "36", "--crop", "32"]
    command += ["--executor", "local", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "14 images: 14 indexed, 0 failed" in done.stdout
    probe = subprocess.run([sys.executable, "-c", "import ray"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0  # the block works: the job really ran without them


def test_a_worker_whose_model_has_other_weights_refuses(tmp_path):
    import dataclasses

    import pytest

    from actindex.jobs.spec import IndexRequest, resolve_spec
    from actindex.jobs.worker import ShardWorker, WorkContext, plan_model
    from actindex.pipeline.errors import UserError

    request = IndexRequest(
        source=str(tmp_path), out=str(tmp_path), model="resnet18", weights="random", layers=("layer4",)
    )
    plan, _ = plan_model(request)
    spec = resolve_spec(request, plan, str(tmp_path), gpus=False)
    other = dataclasses.replace(spec, weights_sha256="f" * 64)  # a node with another torchvision, say
    context = WorkContext(other, str(tmp_path), plan.infos, plan.rfs)
    with pytest.raises(UserError, match="other weights than the run's"):
        ShardWorker(context)
    ShardWorker(WorkContext(spec, str(tmp_path), plan.infos, plan.rfs)).close()  # the right ones load
