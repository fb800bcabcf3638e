"""The Ray executor: the same tables as the plain loop on a local Ray and on multi-node clusters, shards
written by the node that computed them, a node lost mid-write, 1-CPU nodes, and clusters that cannot
run the job or must wait."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from jobs.index import run_index
from jobs.ray_executor import ClusterError
from pipeline.writer import IndexLayout
from tests.jobs.test_index_reference import assert_matches_reference, index_config, reference
from tests.tables import assert_same_tables

SLOW = "python:tests.faults:Slow"  # resnet18, 1 s slower per batch: every actor of a cluster gets shards
NODE_PLUGIN = Path(__file__).parents[1] / "node_plugin"


@contextlib.contextmanager
def cluster(*nodes: dict):
    """A Ray cluster of processes on this machine (ray.cluster_utils): head first, then the other nodes;
    the test's driver is connected to it. Yields (address, [node, ...])."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    made = Cluster(initialize_head=True, head_node_args=nodes[0])
    handles = [made.head_node] + [made.add_node(**args) for args in nodes[1:]]
    try:
        ray.init(address=made.address, log_to_driver=False)
        yield made, handles
    finally:
        ray.shutdown()
        made.shutdown()


def slow_config(source, out, **kwargs):
    config = index_config(source, out, trust_code=True, **kwargs)
    config.model, config.shard_size, config.batch_size = SLOW, 2, 2  # 7 shards of one slow batch each
    return config


def test_local_ray_matches_reference_and_plain_loop(ray_index, natural_dataset, tmp_path):
    assert_matches_reference(ray_index, reference(natural_dataset))
    run_index(index_config(natural_dataset, tmp_path / "plain", executor="local"))
    assert_same_tables(ray_index, tmp_path / "plain")  # same batches, same torch threads: same bits


@pytest.mark.slow
def test_two_nodes_each_write_the_shards_they_compute_and_equal_the_plain_loop(natural_dataset, tmp_path):
    plain = tmp_path / "plain"
    run_index(slow_config(natural_dataset, plain, executor="local"))
    # two CPUs per node, like this machine: the actors run torch on 2 threads, as the plain loop does
    with cluster({"num_cpus": 2}, {"num_cpus": 2}) as (made, nodes):
        summary = run_index(
            slow_config(natural_dataset, tmp_path / "idx", executor="ray", address=made.address)
        )
    assert summary.indexed == 14
    assert_same_tables(tmp_path / "idx", plain)
    markers = IndexLayout(tmp_path / "idx").completed_shards().values()
    writers = {(m["writer"]["node"], m["writer"]["pid"]) for m in markers}
    assert {node for node, _ in writers} == {node.node_id for node in nodes}  # both nodes wrote shards
    assert len(writers) == 2 and os.getpid() not in {pid for _, pid in writers}  # not the driver


@pytest.mark.slow
def test_a_node_lost_while_writing_a_shard_costs_nothing(natural_dataset, tmp_path):
    plain = tmp_path / "plain"
    run_index(slow_config(natural_dataset, plain, executor="local"))
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(NODE_PLUGIN), os.getcwd()]),
        "ACTINDEX_TEST_PAUSE_DIR": str(pause),
    }
    out, result = tmp_path / "idx", {}
    with cluster({"num_cpus": 2}, {"num_cpus": 2, "env_vars": env}) as (made, nodes):
        config = slow_config(natural_dataset, out, executor="ray", address=made.address)
        job = threading.Thread(target=lambda: result.update(summary=run_index(config)), daemon=True)
        job.start()
        deadline = time.time() + 180
        while not list(pause.iterdir()) and job.is_alive() and time.time() < deadline:
            time.sleep(0.1)
        half_written = Path(next(pause.iterdir()).read_text())  # one activations file of the lost attempt
        assert half_written.is_file()
        seen = IndexLayout(out).completed_shards()
        assert all(half_written.relative_to(out).as_posix() not in m["files"] for m in seen.values())
        made.remove_node(nodes[1])
        job.join(timeout=300)
    assert result["summary"].indexed == 14
    assert_same_tables(out, plain)
    layout = IndexLayout(out)
    listed = {layout.root / f for m in layout.completed_shards().values() for f in m["files"]}
    on_disk = {p for folder in layout.data_dirs() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == listed and not half_written.exists()  # nothing of the lost attempt is left


@pytest.mark.slow
def test_one_cpu_nodes_run_the_job(natural_dataset, tmp_path):
    """One actor per node takes that node's only CPU: it decodes and finishes in its own threads, so
    nothing else has to be scheduled there."""
    with cluster({"num_cpus": 1}, {"num_cpus": 1}) as (made, _):
        summary = run_index(
            index_config(natural_dataset, tmp_path / "idx", executor="ray", address=made.address)
        )
    assert summary.indexed == 14
    assert_matches_reference(tmp_path / "idx", reference(natural_dataset))  # torch on 1 thread: close


def test_a_cluster_without_a_usable_node_is_refused_at_once(natural_dataset, tmp_path):
    with cluster({"num_cpus": 0}) as (made, _), pytest.raises(ClusterError, match="add a node \\(ray start"):
        run_index(index_config(natural_dataset, tmp_path / "idx", executor="ray", address=made.address))


@pytest.mark.slow
def test_actors_waiting_for_busy_resources_say_so_then_run(natural_dataset, tmp_path, monkeypatch, caplog):
    import ray

    monkeypatch.setattr("jobs.ray_executor.WAIT_WARNING_S", 1.0)
    result = {}
    with cluster({"num_cpus": 1}) as (made, _):

        @ray.remote(num_cpus=1)
        class Hog:
            def ping(self):
                return True

        hog = Hog.remote()
        ray.get(hog.ping.remote())  # the node's only CPU is taken
        config = index_config(natural_dataset, tmp_path / "idx", executor="ray", address=made.address)
        job = threading.Thread(target=lambda: result.update(summary=run_index(config)), daemon=True)
        with caplog.at_level(logging.WARNING, logger="actindex"):
            job.start()
            deadline = time.time() + 120
            while "waiting for 1 model actors" not in caplog.text and time.time() < deadline:
                time.sleep(0.1)
            assert "waiting for 1 model actors" in caplog.text and "ray status" in caplog.text
            ray.kill(hog)
            job.join(timeout=300)
    assert result["summary"].indexed == 14
