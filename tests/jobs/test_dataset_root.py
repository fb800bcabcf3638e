"""One dataset, one set of ids (issue 20): a list file's relpaths are relative to a root that holds every
listed file (--root, else their longest common folder on the index's first run, then the index's own), so
the same images listed with absolute paths, with relative paths from another folder, or indexed as their
folder get the same relpaths, ids and uris; a list that grows keeps its ids; a file outside the root is
refused naming --root."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from actindex.pipeline.sources import image_id_for
from actindex.queries.db import connect
from tests.conftest import PLANTED
from tests.jobs.test_cli import invoke

PLANTED_ARGS = (
    "--model", PLANTED, "--layers", "relu1", "--k", "2", "--executor", "local", "--trust-code",
    "--resize", "16", "--crop", "16", "--no-progress", "--shard-size", "8",
)  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """20 small images in two label folders, under data/photos/."""
    base = tmp_path_factory.mktemp("roots")
    for i in range(20):
        folder = base / "data" / "photos" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 20), (10 * i, 200 - 5 * i, 90)).save(folder / f"img{i:02d}.png")
    return base


def files(photos) -> list:
    return sorted((photos / "data" / "photos").rglob("*.png"))


def images(index) -> list[tuple]:
    query = "SELECT relpath, image_id, uri FROM images ORDER BY relpath"
    return connect(index).sql(query).fetchall()


def index(source, out, *extra) -> None:
    result = invoke("index", source, "--out", out, *PLANTED_ARGS, *extra)
    assert result.exit_code == 0, result.output


def test_a_folder_and_lists_of_its_files_get_the_same_ids(photos, tmp_path):
    index(photos / "data" / "photos", tmp_path / "folder")
    absolute = tmp_path / "absolute.csv"
    absolute.write_text("path,label\n" + "".join(f"{path},x\n" for path in files(photos)))
    index(absolute, tmp_path / "absolute")
    elsewhere = photos / "lists" / "deeper"
    elsewhere.mkdir(parents=True, exist_ok=True)
    relative = elsewhere / "relative.txt"  # paths relative to the list's folder: ../../data/photos/...
    relative.write_text(
        "".join(f"../../data/photos/{path.parent.name}/{path.name}\n" for path in files(photos))
    )
    index(relative, tmp_path / "relative")

    expected = images(tmp_path / "folder")
    assert len(expected) == 20 and expected[0][0] == "cats/img01.png"
    assert expected[0][1] == image_id_for("cats/img01.png")
    assert expected[0][2] == str((photos / "data" / "photos" / "cats" / "img01.png").resolve())
    assert images(tmp_path / "absolute") == expected
    assert images(tmp_path / "relative") == expected
    root = str((photos / "data" / "photos").resolve())
    for name in ("folder", "absolute", "relative"):
        assert json.loads((tmp_path / name / "run.json").read_text())["params"]["dataset_root"] == root


def test_a_list_that_grows_keeps_its_ids_and_a_file_outside_its_root_is_refused(photos, tmp_path):
    listed = tmp_path / "files.txt"
    first = [path for path in files(photos) if path.name < "img10.png"]  # cats and dogs: root data/photos
    listed.write_text("".join(f"{path}\n" for path in first))
    out = tmp_path / "idx"
    index(listed, out)
    before = images(out)
    listed.write_text("".join(f"{path}\n" for path in files(photos)))  # the list grows
    index(listed, out)
    after = images(out)
    assert len(before) == 10 and len(after) == 20 and set(before) <= set(after)
    assert all(not relpath.startswith("..") for relpath, _, _ in after)

    stray = photos / "data" / "stray.png"  # beside the root, not inside it
    Image.new("RGB", (24, 20), "gray").save(stray)
    listed.write_text(listed.read_text() + f"{stray}\n")
    result = invoke("index", listed, "--out", out, *PLANTED_ARGS)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "stray.png" in lines[0] and "outside the dataset root" in lines[0], lines
    assert "--root" in lines[0]
    assert images(out) == after  # nothing indexed


def test_root_chooses_the_folder_ids_are_relative_to(photos, tmp_path):
    cats = [path for path in files(photos) if path.parent.name == "cats"]
    listed = tmp_path / "cats.csv"
    listed.write_text("".join(f"{path}\n" for path in cats))
    index(listed, tmp_path / "common")  # one folder listed: its files' common folder is cats/ itself
    assert images(tmp_path / "common")[0][0] == "img01.png"
    index(listed, tmp_path / "rooted", "--root", photos / "data" / "photos")
    assert images(tmp_path / "rooted")[0][0] == "cats/img01.png"
    other = invoke("index", listed, "--out", tmp_path / "rooted", *PLANTED_ARGS, "--root", photos / "data")
    assert other.exit_code == 2 and "dataset_root" in other.output and "--overwrite" in other.output
    refused = invoke(
        "index", photos / "data" / "photos", "--out", tmp_path / "x", *PLANTED_ARGS, "--root", photos
    )
    assert refused.exit_code == 2 and "is not a list file" in refused.output
