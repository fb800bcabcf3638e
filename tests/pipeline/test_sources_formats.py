"""WebDataset tar shards and Parquet image columns as sources: listing, ids, uris, and bad members."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actindex.pipeline.containers import Columns
from actindex.pipeline.decode import Decoder, error_kind
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.listing import list_images
from actindex.pipeline.sources import dataset_root, expand_braces, image_id_for
from actindex.pipeline.storage import open_image_bytes, parquet_uri, split_uri, tar_uri
from tests.conftest import PLANTED_PREP
from tests.containers import add_member, images_of, write_parquet, write_tars


def test_brace_patterns_expand_like_webdataset():
    assert list(expand_braces("s/{00008..00011}.tar")) == [f"s/{n:05d}.tar" for n in range(8, 12)]
    assert list(expand_braces("{a,b}/{1..2}.tar")) == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert list(expand_braces("plain.tar")) == ["plain.tar"]


def test_tar_shards_list_one_image_per_sample_with_its_label(planted_dataset, tmp_path):
    folder, truth = planted_dataset
    assert write_tars(folder, tmp_path / "shards", per_shard=4) == 3
    refs = list_images(str(tmp_path / "shards/{00000..00002}.tar"))
    assert dataset_root(str(tmp_path / "shards/{00000..00002}.tar")) == str((tmp_path / "shards").resolve())
    originals = {key: (label, data) for key, label, data in images_of(folder)}
    assert len(refs) == len(truth) == 9
    for ref in refs:
        tar_name, member = ref.relpath.split("#")
        assert ref.image_id == image_id_for(ref.relpath)
        assert ref.uri == tar_uri(str((tmp_path / "shards" / tar_name).resolve()), member)
        label, data = originals[member.removesuffix(".png")]
        assert ref.label == label and open_image_bytes(ref.uri) == data
    assert refs[0].relpath == "00000.tar#edge0.png"  # images_of sorts by relpath: edge/, plain/, red/
    assert list_images(str(tmp_path / "shards/*.tar")) == refs  # a glob names the same shards


def test_tar_samples_json_labels_and_samples_without_images(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add_member(tar, "x/k1.json", json.dumps({"label": 7, "caption": "a cat"}).encode())
        add_member(tar, "x/k1.jpg", b"jpeg bytes")
        add_member(tar, "x/k1.webp", b"second image of the sample: not listed")
        add_member(tar, "x/k2.txt", b"a sample with no image")
        add_member(tar, "x/k3.PNG", b"png")
        add_member(tar, "x/k3.cls", b" 3\n")
    refs = list_images(str(tmp_path / "a.tar"))
    assert [(r.relpath, r.label) for r in refs] == [("a.tar#x/k1.jpg", "7"), ("a.tar#x/k3.PNG", "3")]
    assert open_image_bytes(refs[0].uri) == b"jpeg bytes"


def test_bad_tar_members_are_error_rows(planted_dataset, tmp_path):
    folder, _ = planted_dataset
    data = (folder / "red/red0.png").read_bytes()
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        add_member(tar, "good.png", data)
        add_member(tar, "text.png", b"this is not an image")
        add_member(tar, "cut.png", data)
    whole = (tmp_path / "bad.tar").read_bytes()
    offset = whole.index(data, whole.index(b"cut.png"))  # where cut.png's data starts
    (tmp_path / "bad.tar").write_bytes(whole[: offset + len(data) // 2])
    refs = {ref.relpath: ref for ref in list_images(str(tmp_path / "bad.tar"))}
    decoder = Decoder(PLANTED_PREP)
    decoded = {name.split("#")[1]: decoder(ref.uri) for name, ref in refs.items()}
    assert decoded["good.png"].error is None and decoded["good.png"].pixels.shape == (3, 64, 64)
    assert error_kind(decoded["text.png"].error) == "not an image"
    assert error_kind(decoded["cut.png"].error) == "truncated", decoded["cut.png"].error


def test_a_tar_cut_inside_a_header_lists_what_precedes_and_reports_the_rest(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add_member(tar, "k1.png", b"x" * 600)
        add_member(tar, "k2.png", b"y" * 600)
    whole = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(whole[: whole.index(b"k2.png") + 100])  # inside k2's header
    errors: list = []
    assert [r.relpath for r in list_images(str(tmp_path / "a.tar"), errors=errors)] == ["a.tar#k1.png"]
    assert [(relpath, reason.split(":")[0]) for relpath, reason in errors] == [("a.tar", "truncated")]
    with pytest.raises(InvalidInputError, match="ends inside a member header"):
        list_images(str(tmp_path / "a.tar"))  # never a silent drop


def test_parquet_img2dataset_and_hugging_face_layouts(planted_dataset, tmp_path):
    folder, _ = planted_dataset
    write_parquet(folder, tmp_path / "img2dataset", per_file=5)
    write_parquet(folder, tmp_path / "hf", per_file=5, layout="hf")
    originals = {key: (label, data) for key, label, data in images_of(folder)}
    refs = list_images(str(tmp_path / "img2dataset/*.parquet"), columns=Columns(label="caption"))
    assert [r.relpath for r in refs[:2]] == ["00000.parquet#edge0", "00000.parquet#edge1"]
    for ref in refs:
        label, data = originals[ref.relpath.split("#")[1]]
        assert ref.label == label and open_image_bytes(ref.uri) == data
    location = str((tmp_path / "img2dataset/00001.parquet").resolve())
    assert refs[5].uri == parquet_uri(location, 0, "jpg") == f"parquet:{location}#row=0&column=jpg"
    hf = list_images(str(tmp_path / "hf/*.parquet"), columns=Columns(label="label"))
    assert [r.relpath for r in hf[:2]] == ["00000.parquet#000000000", "00000.parquet#000000001"]
    assert [open_image_bytes(r.uri) for r in hf] == [data for _, _, data in images_of(folder)]
    assert [r.label for r in hf] == [label for _, label, _ in images_of(folder)]


def test_parquet_options_and_null_bytes(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 0, 0)).save(png, format="PNG")
    table = pa.table({"id": ["a", "b"], "pixels": pa.array([png.getvalue(), None], pa.binary())})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(InvalidInputError, match="no image column jpg or image.*--image-column"):
        list_images(str(tmp_path / "t.parquet"))
    with pytest.raises(InvalidInputError, match="no column 'nope'"):
        list_images(str(tmp_path / "t.parquet"), columns=Columns(image="pixels", key="nope"))
    refs = list_images(str(tmp_path / "t.parquet"), columns=Columns(image="pixels", key="id"))
    assert [r.relpath for r in refs] == ["t.parquet#a", "t.parquet#b"]
    assert split_uri(refs[1].uri) == (
        "parquet",
        str((tmp_path / "t.parquet").resolve()),
        "row=1&column=pixels",
    )
    decoded = [Decoder(PLANTED_PREP)(r.uri) for r in refs]
    assert decoded[0].error is None and (decoded[0].width, decoded[0].height) == (96, 96)
    assert decoded[1].error == "not an image: no bytes: null in column 'pixels' (row 1)"


def test_local_files_keep_their_uri_relpath_and_id(planted_dataset):
    folder, _ = planted_dataset
    ref = next(r for r in list_images(str(folder)) if r.relpath == "red/red0.png")
    assert ref.uri == str(folder.resolve() / "red/red0.png") and ref.image_id == image_id_for("red/red0.png")
    assert split_uri(ref.uri) == ("file", ref.uri, "")
