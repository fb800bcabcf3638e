"""The GPU path wired into the job, exercised on the CPU: decoding with torchvision.io on the model's
device (with the CPU decoder as fallback) and reduced precision through the GpuRecorder."""

from __future__ import annotations

import numpy as np

from actindex.jobs.indexing import run_index
from actindex.queries.db import connect
from tests.jobs.test_index_reference import index_config


def activations(index_dir) -> dict:
    rows = connect(index_dir).sql("SELECT layer, image_id, unit, act, y, x FROM activations").fetchall()
    return {(layer, image, unit): (act, y, x) for layer, image, unit, act, y, x in rows}


def images(index_dir) -> list:
    return sorted(connect(index_dir).sql("SELECT image_id, width, height, status FROM images").fetchall())


def test_device_decode_matches_the_cpu_decoder(local_index_dir, natural_dataset, tmp_path):
    summary = run_index(index_config(natural_dataset, tmp_path / "idx", executor="local", device_decode=True))
    assert summary.indexed == 14
    assert images(tmp_path / "idx") == images(local_index_dir)  # same upright sizes, nothing dropped
    got, want = activations(tmp_path / "idx"), activations(local_index_dir)
    assert got.keys() == want.keys()
    a = np.array([got[k][0] for k in want])
    b = np.array([want[k][0] for k in want])
    assert np.corrcoef(a, b)[0, 1] > 0.999  # pixels differ by resampling rounding only (mean < 0.2 levels)
    same_peak = np.mean([got[k][1:] == want[k][1:] for k in want])
    assert same_peak > 0.9


def test_bf16_precision_keeps_most_of_the_top_k(local_index_dir, natural_dataset, tmp_path):
    run_index(index_config(natural_dataset, tmp_path / "idx", executor="local", precision="bf16"))
    con, ref = connect(tmp_path / "idx"), connect(local_index_dir)
    query = "SELECT layer, unit, list(image_id ORDER BY rank) FROM topk GROUP BY ALL"
    got = {(layer, unit): set(ids) for layer, unit, ids in con.sql(query).fetchall()}
    want = {(layer, unit): set(ids) for layer, unit, ids in ref.sql(query).fetchall()}
    overlap = np.mean([len(got[key] & want[key]) / len(want[key]) for key in want])
    assert 0.8 < overlap <= 1.0
