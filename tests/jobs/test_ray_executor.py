"""The same job on a local Ray and on a two-node Ray cluster gives tables identical to the plain loop."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from jobs.index import run_index
from pipeline.writer import IndexLayout
from tests.jobs.test_index_reference import assert_matches_reference, index_config


def table_rows(index_dir, name: str) -> list:
    """All rows of a table's files (from the completion markers), in a canonical order."""
    layout = IndexLayout(index_dir)
    if name == "topk":
        files = sorted((layout.root / "topk").glob("*.parquet"))
    else:
        files = [
            layout.root / f
            for m in layout.completed_shards().values()
            for f in m["files"]
            if f.startswith(name)
        ]
    rows = [tuple(r.values()) for f in files for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=repr)


def assert_same_tables(left, right):
    for name in ("images", "activations", "topk"):
        assert table_rows(left, name) == table_rows(right, name), name


def assert_close_tables(left, right):
    """Equal but for float rounding: another torch thread count may round a batch-of-one GEMM differently."""
    assert table_rows(left, "images") == table_rows(right, "images")
    for name, act in (("activations", 3), ("topk", 4)):
        a, b = table_rows(left, name), table_rows(right, name)
        assert len(a) == len(b), name
        assert sorted(r[:act] + r[act + 1 :] for r in a) == sorted(r[:act] + r[act + 1 :] for r in b), name
        a_act = np.array([r[act] for r in sorted(a, key=lambda r: r[:act])])  # noqa: B023
        b_act = np.array([r[act] for r in sorted(b, key=lambda r: r[:act])])  # noqa: B023
        np.testing.assert_allclose(a_act, b_act, rtol=1e-5, atol=1e-6)


def test_local_ray_matches_reference_and_plain_loop(ray_index, natural_dataset, tmp_path):
    from tests.jobs.test_index_reference import reference

    assert_matches_reference(ray_index, reference(natural_dataset))
    run_index(index_config(natural_dataset, tmp_path / "plain", executor="local"))
    assert_close_tables(ray_index, tmp_path / "plain")


def test_two_node_cluster_equals_local_ray(ray_index, natural_dataset, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    # two CPUs per node, like the local Ray: the model actor runs torch on 2 threads in both runs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        summary = run_index(
            index_config(natural_dataset, tmp_path / "idx", executor="ray", address=cluster.address)
        )
        assert summary.indexed == 14
        assert_same_tables(tmp_path / "idx", ray_index)
    finally:
        ray.shutdown()
        cluster.shutdown()
