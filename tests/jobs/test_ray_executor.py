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

from actindex.jobs import ray_executor
from actindex.jobs.indexing import run_index
from actindex.jobs.ray_executor import ClusterError
from actindex.pipeline.layout import IndexLayout
from tests.jobs.test_index_reference import assert_matches_reference, index_config
from tests.tables import assert_same_tables

SLOW = "python:tests.faults:Slow"  # resnet18, 1 s slower per batch: every actor of a cluster gets shards
NODE_PLUGIN = Path(__file__).parents[1] / "node_plugin"
WAIT_S = 120  # for nodes to join or leave the cluster (a bound for failures, not a timing assertion)


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of processes on this machine (ray.cluster_utils), shared by this module's cluster tests,
    the test's driver connected to it. Its head has no CPU, like a KubeRay head started with num-cpus 0, so
    model actors run only on the nodes each test adds with `nodes()`. (Starting a head costs seconds;
    adding a node less.) These tests run after every other test (tests/conftest.py): connecting ends this
    process's local Ray."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        ray.init(address=made.address, log_to_driver=False)
        yield made
    finally:
        ray.shutdown()
        made.shutdown()


@contextlib.contextmanager
def nodes(made, *args: dict):
    """Nodes added to the cluster for one test (`args` as for Cluster.add_node); yields their handles.
    At the end the nodes still there are removed, and the cluster is back to its head alone."""
    handles = [made.add_node(**node_args) for node_args in args]
    try:
        made.wait_for_nodes(timeout=WAIT_S)
        yield handles
    finally:
        for handle in handles:
            if handle in made.worker_nodes:  # not removed by the test itself
                made.remove_node(handle)
        made.wait_for_nodes(timeout=WAIT_S)  # the next test's plan sees only the head alive


def slow_config(source, out, **kwargs):
    config = index_config(source, out, trust_code=True, **kwargs)
    config.model, config.shard_size, config.batch_size = SLOW, 2, 2  # 7 shards of one slow batch each
    config.weights = None  # its own: resnet18's, seeded
    return config


@pytest.fixture(scope="module")
def slow_plain(natural_dataset, tmp_path_factory):
    """slow_config's index by the plain loop, what every cluster run of it must equal. Its model is resnet18
    itself: Slow is resnet18 (the same weights, the same results) and a second's sleep per batch, which
    only the cluster runs need."""
    out = tmp_path_factory.mktemp("slow_plain")
    config = slow_config(natural_dataset, out, executor="local")
    config.model, config.weights = "resnet18", "random"
    run_index(config)
    return out


def test_local_ray_matches_reference_and_plain_loop(ray_index, local_index_dir, natural_reference):
    assert_matches_reference(ray_index, natural_reference)
    assert_same_tables(ray_index, local_index_dir)  # same batches, same torch threads: same bits


@pytest.mark.slow
def test_two_nodes_each_write_the_shards_they_compute_and_equal_the_plain_loop(
    ray_cluster, slow_plain, natural_dataset, tmp_path
):
    # two CPUs per node, like this machine: the actors run torch on 2 threads, as the plain loop does
    with nodes(ray_cluster, {"num_cpus": 2}, {"num_cpus": 2}) as added:
        summary = run_index(
            slow_config(natural_dataset, tmp_path / "idx", executor="ray", address=ray_cluster.address)
        )
    assert summary.indexed == 14
    assert_same_tables(tmp_path / "idx", slow_plain)
    markers = IndexLayout(tmp_path / "idx").completed_shards().values()
    writers = {(m["writer"]["node"], m["writer"]["pid"]) for m in markers}
    assert {node for node, _ in writers} == {node.node_id for node in added}  # both nodes wrote shards
    assert len(writers) == 2 and os.getpid() not in {pid for _, pid in writers}  # not the driver


@pytest.mark.slow
def test_a_node_lost_while_writing_a_shard_costs_nothing(ray_cluster, slow_plain, natural_dataset, tmp_path):
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(NODE_PLUGIN), os.getcwd()]),
        "ACTINDEX_TEST_PAUSE_DIR": str(pause),
    }
    out, result = tmp_path / "idx", {}
    with nodes(ray_cluster, {"num_cpus": 2}, {"num_cpus": 2, "env_vars": env}) as added:
        config = slow_config(natural_dataset, out, executor="ray", address=ray_cluster.address)
        job = threading.Thread(target=lambda: result.update(summary=run_index(config)), daemon=True)
        job.start()
        deadline = time.time() + 180
        while not list(pause.iterdir()) and job.is_alive() and time.time() < deadline:
            time.sleep(0.1)
        half_written = Path(next(pause.iterdir()).read_text())  # one activations file of the lost attempt
        assert half_written.is_file()
        seen = IndexLayout(out).completed_shards()
        assert all(half_written.relative_to(out).as_posix() not in m["files"] for m in seen.values())
        ray_cluster.remove_node(added[1])
        job.join(timeout=300)
    assert result["summary"].indexed == 14
    assert_same_tables(out, slow_plain)
    layout = IndexLayout(out)
    listed = {layout.root / f for m in layout.completed_shards().values() for f in m["files"]}
    on_disk = {p for folder in layout.data_dirs() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == listed and not half_written.exists()  # nothing of the lost attempt is left


def test_a_cluster_without_a_usable_node_is_refused_at_once(ray_cluster, natural_dataset, tmp_path):
    # the head alone: it has no CPU
    with pytest.raises(ClusterError, match="add a node \\(ray start"):
        run_index(
            index_config(natural_dataset, tmp_path / "idx", executor="ray", address=ray_cluster.address)
        )


@pytest.mark.slow
def test_actors_waiting_for_busy_one_cpu_nodes_say_so_then_run_one_per_node(
    ray_cluster, natural_dataset, natural_reference, tmp_path, monkeypatch, caplog
):
    """Actors that wait for resources other jobs hold say so, and run once they are free. One actor per
    node takes that node's only CPU: it decodes and finishes in its own threads, so nothing else has to be
    scheduled there."""
    import ray

    monkeypatch.setattr("actindex.jobs.ray_executor.WAIT_WARNING_S", 1.0)
    result = {}
    with nodes(ray_cluster, {"num_cpus": 1}, {"num_cpus": 1}):

        @ray.remote(num_cpus=1)
        class Hog:
            def ping(self):
                return True

        hogs = [Hog.remote() for _ in range(2)]
        ray.get([hog.ping.remote() for hog in hogs])  # each node's only CPU is taken
        config = index_config(natural_dataset, tmp_path / "idx", executor="ray", address=ray_cluster.address)
        job = threading.Thread(target=lambda: result.update(summary=run_index(config)), daemon=True)
        with caplog.at_level(logging.WARNING, logger="actindex"):
            job.start()
            deadline = time.time() + 120
            while "waiting for 2 model actors" not in caplog.text and time.time() < deadline:
                time.sleep(0.1)
            assert "waiting for 2 model actors" in caplog.text and "ray status" in caplog.text
            for hog in hogs:
                ray.kill(hog)
            job.join(timeout=300)
    assert result["summary"].indexed == 14
    assert_matches_reference(tmp_path / "idx", natural_reference)  # torch on 1 thread: close


@pytest.mark.slow
def test_actors_that_are_only_slow_to_start_do_not_say_they_wait(
    ray_cluster, slow_plain, natural_dataset, tmp_path, monkeypatch, caplog
):
    """An actor that has its resources but takes long to load its model (each forward of Slow takes a
    second, and planning runs several) is starting, not waiting: no "waiting for ... model actors". (Ray's
    own start of the actor's process is not what is tested: the check is asked only once it has one, so a
    busy machine that takes more than the 1 s of patience to spawn it cannot fail the test.)"""
    monkeypatch.setattr("actindex.jobs.ray_executor.WAIT_WARNING_S", 1.0)
    has_process = ray_executor._has_process

    def once_spawned(actor) -> bool:
        deadline = time.monotonic() + 120
        while not has_process(actor) and time.monotonic() < deadline:
            time.sleep(0.05)
        return has_process(actor)

    monkeypatch.setattr(ray_executor, "_has_process", once_spawned)
    with nodes(ray_cluster, {"num_cpus": 2}), caplog.at_level(logging.WARNING, logger="actindex"):
        config = slow_config(natural_dataset, tmp_path / "idx", executor="ray", address=ray_cluster.address)
        summary = run_index(config)
    assert summary.indexed == 14 and summary.startup_seconds > 2.0  # long past the 1 s of patience
    assert "waiting for" not in caplog.text, caplog.text
    assert_same_tables(tmp_path / "idx", slow_plain)
