"""The driver's listing spilled to disk in sorted runs gives exactly the in-memory listing: the same images
in the same order, duplicates dropped across runs (the last label wins), collisions refused, the
temporary runs removed; and the shards planned from it are the shards planned from a list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import actindex.pipeline.sources
from actindex.pipeline.errors import InvalidInputError, MissingInputError
from actindex.pipeline.listing import Listing
from actindex.pipeline.shards import iter_shards, plan_shards


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """37 tiny images in three class folders, names chosen so that walk order is not relpath order."""
    root = tmp_path_factory.mktemp("listing")
    for i in range(37):
        path = root / ["a", "a.b", "z"][i % 3] / f"{(i * 7919) % 101:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (2, 2)).save(path)
    (root / "a.png").write_bytes(b"")  # sorts between a/ and a.b/: "a.png" < "a/..."
    return root


@pytest.mark.parametrize("run_rows", [1, 5, 19, 36, 38, 1000])  # 38 images: 2 runs, 1 run spilled
def test_runs_on_disk_list_what_one_run_in_memory_lists(folder, run_rows):
    with Listing.build(str(folder)) as whole:
        expected = list(whole)
        assert len(whole.runs) == 1 and not isinstance(whole.runs[0], Path)
    assert [r.relpath for r in expected] == sorted(r.relpath for r in expected)
    assert len(expected) == 38
    with Listing.build(str(folder), run_rows=run_rows) as listing:
        spilled = run_rows <= 38
        assert all(isinstance(run, Path) for run in listing.runs) == spilled
        assert len(listing) == 38
        assert list(listing) == expected and list(listing) == expected  # iterated twice: the same
        assert np.array_equal(listing.ids(), np.sort([r.image_id for r in expected]))
        folders = {run.parent for run in listing.runs if isinstance(run, Path)}
    assert not any(f.exists() for f in folders)  # the runs are removed on close
    shards = plan_shards(expected, 4)
    assert list(iter_shards(Listing.build(str(folder), run_rows=run_rows), 4)) == shards


def test_a_path_listed_twice_in_different_runs_is_kept_once_with_its_last_label(folder):
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    rows = [f"{name},first" for name in names] + [f"{names[3]},last"]  # relative to the list file
    (folder / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    try:
        with Listing.build(str(folder / "list.csv"), run_rows=7) as listing:
            refs = list(listing)
    finally:
        (folder / "list.csv").unlink()
    assert len(refs) == len(listing) == len(names)
    assert [ref.relpath for ref in refs] == names
    assert [ref.label for ref in refs] == ["first"] * 3 + ["last"] + ["first"] * (len(names) - 4)


def test_colliding_ids_are_refused(folder, monkeypatch):
    real = actindex.pipeline.sources.image_id_for
    colliding = ("a.png", "z/100.png")
    monkeypatch.setattr(actindex.pipeline.sources, "image_id_for", lambda p: 7 if p in colliding else real(p))
    with pytest.raises(InvalidInputError, match="collision between 'a.png' and 'z/100.png'"):
        Listing.build(str(folder))


def test_a_source_without_images_is_refused(tmp_path):
    with pytest.raises(MissingInputError, match="no images"):
        Listing.build(str(tmp_path), run_rows=2)
