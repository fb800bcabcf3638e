"""The same images as a folder, WebDataset tars and img2dataset Parquet, locally and on an S3 API (moto in
server mode on 127.0.0.1): the same tables, grids cut from inside containers and objects, bad input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from actindex.queries.db import connect
from tests.containers import content_tables, write_parquet, write_tars
from tests.jobs.conftest import BUCKET
from tests.jobs.test_cli import PLANTED, invoke
from tests.ports import refused_port

s3fs = pytest.importorskip("s3fs")
# batch size 1: every image is computed alone, so indexes listing the images in other orders give the same
# bits (see tests/tables.py on batching and rounding)
PLANTED_ARGS = (
    "--model", PLANTED, "--layers", "relu*,head", "--k", "3", "--executor", "local", "--trust-code",
    "--resize", "64", "--crop", "64", "--interpolation", "nearest", "--mean", "0,0,0", "--std", "1,1,1",
    "--no-progress", "--shard-size", "4", "--batch-size", "1",
)  # fmt: skip


@pytest.fixture(scope="module")
def s3(s3_endpoint, planted_dataset, tmp_path_factory):
    """The planted images on the S3 server as a folder, tar shards and Parquet files; yields the local
    copies' folder."""
    folder, _ = planted_dataset
    local = tmp_path_factory.mktemp("formats")
    write_tars(folder, local / "shards", per_shard=4)
    write_parquet(folder, local / "parquet", per_file=5)
    fs = s3fs.S3FileSystem()
    fs.put(str(folder) + "/", f"{BUCKET}/folder/", recursive=True)
    fs.put(str(local / "shards") + "/", f"{BUCKET}/shards/", recursive=True)
    fs.put(str(local / "parquet") + "/", f"{BUCKET}/parquet/", recursive=True)
    return local


def index(source: str, out, *extra: str) -> str:
    result = invoke("index", source, "--out", out, *PLANTED_ARGS, *extra)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def folder_index(planted_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_index") / "idx"
    index(str(planted_dataset[0]), out)
    return out


SOURCES = {
    "tars": ("{root}/shards/{{00000..00002}}.tar", ()),
    "parquet": ("{root}/parquet/*.parquet", ("--label-column", "caption")),
}


@pytest.mark.parametrize(
    ("kind", "where"),
    [("tars", "local"), ("parquet", "local"), ("folder", "s3"), ("tars", "s3"), ("parquet", "s3")],
)
def test_every_source_gives_the_folders_tables(s3, folder_index, kind, where, tmp_path):
    root = str(s3) if where == "local" else f"s3://{BUCKET}"
    source, extra = SOURCES.get(kind, ("{root}/folder/", ()))
    out = tmp_path / "idx" if where == "local" else f"s3://{BUCKET}/indexes/{kind}/"  # S3 in, S3 out
    output = index(source.format(root=root), out, *extra)
    assert "9 images: 9 indexed, 0 failed" in output
    assert content_tables(out) == content_tables(folder_index)
    relpaths = [r[0] for r in connect(out).execute("SELECT relpath FROM images ORDER BY 1").fetchall()]
    expected = {"folder": "edge/edge0.png", "tars": "00000.tar#edge0.png", "parquet": "00000.parquet#edge0"}
    assert relpaths[0] == expected[kind]
    if kind != "folder" or where == "s3":
        grid_tile_is_red(out, tmp_path)  # crops cut from inside tars, Parquet rows or objects, here or on S3


def grid_tile_is_red(out, tmp_path) -> None:
    png = tmp_path / "grid.png"
    result = invoke("grid", out, "--layer", "relu2", "--units", "0", "--k", "3", "--out", png, "--tile", "64")
    assert result.exit_code == 0, result.output
    r, g, b = Image.open(png).convert("RGB").getpixel((64 + 16 + 32, 2 + 32))
    assert r > 150 and g < 60 and b < 60


def test_a_report_of_an_s3_index_cuts_its_crops_from_the_objects(s3, tmp_path):
    """`actindex report` reads an index on S3 through the same connect(), and its crops (masked: the
    model reads the images again) from S3 objects."""
    out = f"s3://{BUCKET}/indexes/report/"
    index(f"s3://{BUCKET}/folder/", out)
    site = tmp_path / "site"
    args = ("--layers", "relu2", "--units", "0", "--k", "3", "--tile", "64", "--no-progress", "--trust-code")
    result = invoke("report", out, "--out", site, *args)
    assert result.exit_code == 0, result.output
    r, g, b = Image.open(site / "layers" / "layer=relu2" / "u00000-1.webp").convert("RGB").getpixel((32, 32))
    assert r > 150 and g < 60 and b < 60  # the planted red square, as in grid_tile_is_red: in the mask
    corner = Image.open(site / "layers" / "layer=relu2" / "u00000-1.webp").convert("L").getpixel((1, 1))
    assert corner < 128 * 0.5  # the gray background around it (128), outside the mask: dimmed to a third


def test_objects_deleted_after_listing_are_error_rows(s3, planted_dataset, monkeypatch, tmp_path):
    import actindex.jobs.indexing

    fs = s3fs.S3FileSystem()
    fs.put(str(planted_dataset[0]) + "/", f"{BUCKET}/gone/folder/", recursive=True)
    fs.put(str(s3 / "shards") + "/", f"{BUCKET}/gone/shards/", recursive=True)
    listing, doomed = actindex.jobs.indexing._list, []

    def list_then_delete(*args, **kwargs):
        listed = listing(*args, **kwargs)
        fs.rm(f"{BUCKET}/gone/{doomed.pop()}")
        return listed

    monkeypatch.setattr(actindex.jobs.indexing, "_list", list_then_delete)
    cases = [
        ("folder/", "folder/red/red1.png", "red/red1.png"),
        ("shards/*.tar", "shards/00002.tar", "00002.tar#red2.png"),
    ]
    for source, key, gone in cases:
        doomed.append(key)
        out = tmp_path / source.split("/")[0]
        assert "9 images: 8 indexed, 1 failed" in index(f"s3://{BUCKET}/gone/{source}", out)
        failed = connect(out).execute("SELECT relpath, error FROM images WHERE status = 'error'").fetchall()
        assert failed == [(gone, "unreadable: file not found")]


def test_an_unreachable_endpoint_is_one_line_and_exit_code_2(s3, monkeypatch, tmp_path):
    with refused_port() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # nothing listens there
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            source = f"s3://{BUCKET}/folder/"
            result = invoke("index", source, "--out", tmp_path / "idx", *PLANTED_ARGS, "--retry-budget", "0")
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "cannot reach" in lines[0], result.output


def test_a_rerun_with_other_columns_refuses(s3, tmp_path):
    source = str(s3 / "parquet/*.parquet")
    index(source, tmp_path / "idx", "--label-column", "caption")
    params = json.loads((tmp_path / "idx/run.json").read_text())["params"]
    assert params["columns"] == {"image": None, "key": None, "label": "caption"}
    result = invoke("index", source, "--out", tmp_path / "idx", *PLANTED_ARGS, "--label-column", "key")
    assert result.exit_code == 2 and "columns.label: caption -> key" in result.output, result.output


def test_a_list_file_and_a_glob_on_s3_list_what_a_local_one_does(s3, planted_dataset, tmp_path):
    from actindex.pipeline.listing import list_images

    folder, _ = planted_dataset
    fs = s3fs.S3FileSystem()
    text = "path,label\n# a comment\nred/red0.png,warm\n\nedge/edge1.png\nred/red0.png,warm\n"
    fs.pipe(f"{BUCKET}/folder/list.csv", text.encode())
    listed = list_images(f"s3://{BUCKET}/folder/list.csv")
    assert [(r.relpath, r.label, r.uri) for r in listed] == [
        ("edge/edge1.png", None, f"s3://{BUCKET}/folder/edge/edge1.png"),
        ("red/red0.png", "warm", f"s3://{BUCKET}/folder/red/red0.png"),
    ]
    local_list = tmp_path / "list.csv"  # the same rows, with absolute paths
    local_list.write_text(text.replace("red/", f"{folder}/red/").replace("edge/", f"{folder}/edge/"))
    local = list_images(str(local_list))
    assert [r.label for r in local] == [r.label for r in listed]  # the same rows kept, the same labels
    assert [r.relpath for r in local] == [r.relpath for r in listed]  # relative to their common folder
    rooted = list_images(f"s3://{BUCKET}/folder/list.csv", root=f"s3://{BUCKET}")
    assert [r.relpath for r in rooted] == ["folder/edge/edge1.png", "folder/red/red0.png"]
    with pytest.raises(ValueError, match="edge1.png .*outside the dataset root .*--root"):
        list_images(f"s3://{BUCKET}/folder/list.csv", root=f"s3://{BUCKET}/folder/red")
    globbed = list_images(f"s3://{BUCKET}/folder/red/*.png")
    assert [(r.relpath, r.label) for r in globbed] == [(f"red{i}.png", None) for i in range(3)]
    prefix = list_images(f"s3://{BUCKET}/folder/")
    assert {r.label for r in prefix} == {"red", "edge", "plain"}  # first-level "folders" label, as locally


def test_a_prefix_is_listed_page_by_page(s3, monkeypatch):
    """More keys than one ListObjectsV2 page: every one listed, none from a sibling prefix."""
    import actindex.pipeline.sources
    from actindex.pipeline.listing import list_images

    # 1,000 on S3: the same requests, fewer keys
    monkeypatch.setattr(actindex.pipeline.sources, "S3_PAGE_KEYS", 4)
    fs = s3fs.S3FileSystem()
    fs.pipe({f"{BUCKET}/pages/c{i % 2}/{i:05d}.png": b"x" for i in range(11)})
    fs.pipe(f"{BUCKET}/pages2/other.png", b"x")  # shares the prefix's text, not its folder
    refs = list_images(f"s3://{BUCKET}/pages/")
    assert [r.relpath for r in refs] == sorted(f"c{i % 2}/{i:05d}.png" for i in range(11))
    assert refs[0].label == "c0" and refs[0].uri == f"s3://{BUCKET}/pages/c0/00000.png"
