"""The whole job over tests/badinputs.py's corpus: every good image indexed, every bad one an error row."""

from __future__ import annotations

import json

import actindex.jobs.indexing
from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.sources import display_path, path_from_display
from actindex.queries.db import connect
from tests.badinputs import delete_listed, make_corpus, natural_image

PREP = Preprocessing(resize=72, crop=64, interpolation="bilinear")
LAYER1_UNITS = 64  # resnet18 layer1 channels


def config(source, out, **kwargs) -> IndexRequest:
    return IndexRequest(
        source=str(source),
        out=str(out),
        model="resnet18",
        weights="random",
        layers=("layer1",),
        preprocessing=PREP,
        k=3,
        batch_size=8,
        shard_size=10,  # several shards, each mixing good and bad files
        executor="local",
        progress=False,
        **kwargs,
    )


def list_then_delete(monkeypatch, folder, expected) -> None:
    """Make the job's own listing delete the corpus files meant to vanish before they are read."""

    listed = actindex.jobs.indexing._list

    def listing(*args, **kwargs):
        refs = listed(*args, **kwargs)
        delete_listed(folder, expected)
        return refs

    monkeypatch.setattr(actindex.jobs.indexing, "_list", listing)


def run_on_corpus(tmp_path, monkeypatch, awkward_names: bool):
    folder = tmp_path / "corpus"
    expected = make_corpus(folder, awkward_names=awkward_names)
    list_then_delete(monkeypatch, folder, expected)
    summary = run_index(config(folder, tmp_path / "idx"))
    return folder, expected, summary, connect(tmp_path / "idx")


def check_index(tmp_path, expected, summary, con, relpath_of=lambda stored: stored) -> None:
    rows = con.sql("SELECT relpath, uri, status, error, width, height FROM images").fetchall()
    by_relpath = {relpath_of(r[0]): r for r in rows}
    assert len(by_relpath) == len(rows)  # one row per image
    assert sorted(by_relpath) == sorted(expected)  # none missing, none extra
    wrong = []
    for relpath, want in expected.items():
        _, _, status, error, width, height = by_relpath[relpath]
        kind = error.split(":", 1)[0] if error else None
        if (status, kind) != (want.status, want.kind):
            wrong.append(f"{relpath!r}: expected {want.status} {want.kind or ''}, got {status} {error or ''}")
        if want.detail and (not error or want.detail not in error):
            wrong.append(f"{relpath!r}: {error!r} does not say {want.detail!r}")
        if want.size and (width, height) != want.size:
            wrong.append(f"{relpath!r}: stored size {(width, height)}, expected {want.size}")
        if status == "ok" and error is not None:
            wrong.append(f"{relpath!r}: ok with an error")
    assert not wrong, "\n".join(wrong)

    good = sum(e.status == "ok" for e in expected.values())
    assert (summary.images, summary.indexed, summary.failed) == (len(expected), good, len(expected) - good)
    per_image = dict(
        con.sql(
            "SELECT i.relpath, count(a.unit) FROM images i "
            "LEFT JOIN activations a USING (image_id) GROUP BY 1"
        ).fetchall()
    )
    assert {relpath_of(r): n for r, n in per_image.items()} == {
        relpath: LAYER1_UNITS if e.status == "ok" else 0 for relpath, e in expected.items()
    }
    # top-k boxes lie inside the upright originals (the EXIF-rotated one is 80 wide, 96 high)
    outside = con.sql(
        "SELECT count(*) FROM topk JOIN images USING (image_id) "
        "WHERE status <> 'ok' OR x0 < 0 OR y0 < 0 OR x1 > width OR y1 > height OR x0 >= x1 OR y0 >= y1"
    ).fetchall()[0][0]
    assert outside == 0
    assert con.sql("SELECT count(*) FROM topk").fetchall()[0][0] == 3 * LAYER1_UNITS
    manifest = json.loads((tmp_path / "idx" / "run.json").read_text())
    assert manifest["status"] == "complete"


def test_job_indexes_every_good_image_and_records_every_bad_one(tmp_path, monkeypatch) -> None:
    _, expected, summary, con = run_on_corpus(tmp_path, monkeypatch, awkward_names=False)
    check_index(tmp_path, expected, summary, con)
    bomb = con.sql("SELECT error FROM images WHERE relpath = 'bad/bomb.png'").fetchall()[0][0]
    assert bomb == "too large: 20000x20000 exceeds 178956970 pixels"


def test_job_with_non_utf8_and_percent_names_stores_reversible_paths(tmp_path, monkeypatch) -> None:
    folder, expected, summary, con = run_on_corpus(tmp_path, monkeypatch, awkward_names=True)
    check_index(tmp_path, expected, summary, con, relpath_of=path_from_display)
    for relpath in ("awkward/caf\udce9.png", "awkward/100% cotton.png"):
        stored_relpath, uri = con.sql(
            "SELECT relpath, uri FROM images WHERE relpath = $r", params={"r": display_path(relpath)}
        ).fetchall()[0]
        assert stored_relpath == display_path(relpath) and stored_relpath.isprintable()
        assert path_from_display(uri) == str(folder.resolve() / relpath)


def test_job_honours_a_configured_pixel_limit(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    natural_image(1, 64, 64).save(folder / "small.png")
    natural_image(2, 100, 80).save(folder / "large.jpg")
    run_index(config(folder, tmp_path / "idx", max_pixels=5000))
    rows = connect(tmp_path / "idx").sql("SELECT relpath, status, error FROM images ORDER BY 1").fetchall()
    assert rows == [
        ("large.jpg", "error", "too large: 100x80 exceeds 5000 pixels"),
        ("small.png", "ok", None),
    ]
