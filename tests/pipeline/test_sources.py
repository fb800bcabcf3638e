"""list_images: folders, globs and list files -> sorted ImageRefs with stable ids and labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from actindex.pipeline.listing import list_images
from actindex.pipeline.sources import ImageRef, dataset_root, image_id_for, list_root


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel in [
        "dog/b.jpg",
        "dog/a.PNG",
        "cat/z.jpeg",
        "cat/deep/nested.webp",
        "root.bmp",
        "Upper.JPG",
        "notes.txt",
        "cat/readme.md",
        "dog/archive.tar.gz",
        "cat/noext",
    ]:
        touch(root / rel)
    (root / "empty_class").mkdir()
    return root


EXPECTED_RELPATHS = [
    "Upper.JPG",
    "cat/deep/nested.webp",
    "cat/z.jpeg",
    "dog/a.PNG",
    "dog/b.jpg",
    "root.bmp",
]


def test_folder_recursion_labels_extensions_and_order(dataset: Path) -> None:
    refs = list_images(str(dataset))
    assert [r.relpath for r in refs] == EXPECTED_RELPATHS
    labels = {r.relpath: r.label for r in refs}
    assert labels == {
        "Upper.JPG": None,
        "cat/deep/nested.webp": "cat",
        "cat/z.jpeg": "cat",
        "dog/a.PNG": "dog",
        "dog/b.jpg": "dog",
        "root.bmp": None,
    }
    for ref in refs:
        assert isinstance(ref, ImageRef)
        assert ref.image_id == image_id_for(ref.relpath)
        assert 0 <= ref.image_id < 2**63
        assert Path(ref.uri).is_absolute()
        assert Path(ref.uri) == (dataset / ref.relpath).resolve()
    assert dataset_root(str(dataset)) == str(dataset.resolve())


def test_image_ids_are_stable_and_survive_moving_the_dataset(dataset: Path, tmp_path: Path) -> None:
    first = list_images(str(dataset))
    second = list_images(str(dataset))
    assert [(r.relpath, r.image_id) for r in first] == [(r.relpath, r.image_id) for r in second]
    assert len({r.image_id for r in first}) == len(first)

    moved = tmp_path / "elsewhere" / "renamed"
    shutil.move(str(dataset), str(moved))
    after = list_images(str(moved))
    assert [(r.relpath, r.image_id, r.label) for r in after] == [
        (r.relpath, r.image_id, r.label) for r in first
    ]
    assert all(r.uri.startswith(str(moved.resolve())) for r in after)


def test_image_id_for_is_a_fixed_function_of_the_relpath() -> None:
    # Pinned: ids are stored in indexes, so the hash must never change between versions.
    import hashlib

    rel = "dog/b.jpg"
    digest = hashlib.blake2b(rel.encode(), digest_size=8).digest()
    assert image_id_for(rel) == int.from_bytes(digest, "big") & (2**63 - 1)
    assert image_id_for(rel) != image_id_for("dog/a.jpg")


def test_glob_source(dataset: Path) -> None:
    refs = list_images(str(dataset) + "/**/*.jpg")
    # glob itself is case-sensitive on the pattern; the extension filter then keeps image files
    assert [r.relpath for r in refs] == ["dog/b.jpg"]
    assert refs[0].label is None

    refs = list_images(str(dataset) + "/cat/*")
    assert [r.relpath for r in refs] == ["z.jpeg"]  # relative to the glob's literal prefix; no dirs, no .md
    assert refs[0].image_id == image_id_for("z.jpeg")
    assert dataset_root(str(dataset) + "/cat/*") == str((dataset / "cat").resolve())

    refs = list_images(str(dataset) + "/**/*")
    assert [r.relpath for r in refs] == EXPECTED_RELPATHS


def test_csv_list_with_header_and_labels(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    touch(lists / "imgs" / "one.jpg")
    touch(lists / "imgs" / "two.png")
    touch(tmp_path / "abs" / "three.jpg")
    absolute = (tmp_path / "abs" / "three.jpg").resolve()
    list_file = lists / "files.csv"
    list_file.write_text(f"path,label\nimgs/two.png,cat\nimgs/one.jpg,\n{absolute},dog\n")

    refs = list_images(str(list_file))
    by_rel = {r.relpath: r for r in refs}
    assert [r.relpath for r in refs] == sorted(by_rel)
    # relpaths are relative to the listed files' longest common folder (tmp_path), never with '..'
    assert sorted(by_rel) == ["abs/three.jpg", "lists/imgs/one.jpg", "lists/imgs/two.png"]
    assert by_rel["lists/imgs/one.jpg"].label is None
    assert by_rel["lists/imgs/two.png"].label == "cat"
    assert Path(by_rel["lists/imgs/two.png"].uri) == (lists / "imgs" / "two.png").resolve()
    assert Path(by_rel["lists/imgs/two.png"].uri).is_file()
    assert by_rel["lists/imgs/two.png"].image_id == image_id_for("lists/imgs/two.png")
    # an absolute path outside the list's folder keeps working and is labelled
    assert Path(by_rel["abs/three.jpg"].uri) == absolute and by_rel["abs/three.jpg"].label == "dog"
    assert len(refs) == 3
    assert list_root(str(list_file)) == str(tmp_path.resolve())
    # with a root given, relpaths are relative to it; a file outside it is refused naming --root
    inside = list_images(str(list_file), root=str(tmp_path / "lists" / ".."))
    assert [r.relpath for r in inside] == [r.relpath for r in refs]
    with pytest.raises(ValueError, match="three.jpg .*outside the dataset root .*--root"):
        list_images(str(list_file), root=str(lists))


def test_list_is_resolved_against_the_list_folder_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    lists = tmp_path / "lists"
    touch(lists / "a.jpg")
    (lists / "files.txt").write_text("a.jpg\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (ref,) = list_images(str(lists / "files.txt"))
    assert Path(ref.uri) == (lists / "a.jpg").resolve()
    assert ref.relpath == "a.jpg"


def test_txt_list_with_comments_blank_lines_and_duplicates(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.jpg", "sub/c.gif"):
        touch(tmp_path / name)
    list_file = tmp_path / "files.txt"
    list_file.write_text("# my images\nb.jpg\n\na.jpg\nsub/c.gif\nb.jpg\n  a.jpg  \n")
    refs = list_images(str(list_file))
    assert [r.relpath for r in refs] == ["a.jpg", "b.jpg", "sub/c.gif"]
    assert [r.label for r in refs] == [None, None, None]
    assert [r.image_id for r in refs] == [image_id_for(p) for p in ("a.jpg", "b.jpg", "sub/c.gif")]


def test_single_image_file_source(tmp_path: Path) -> None:
    touch(tmp_path / "x.png")
    (ref,) = list_images(str(tmp_path / "x.png"))
    assert ref.relpath == "x.png"
    assert ref.label is None


def test_empty_folder_raises_naming_the_source(tmp_path: Path) -> None:
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    touch(empty / "sub" / "notes.txt")
    with pytest.raises(FileNotFoundError) as info:
        list_images(str(empty))
    assert str(empty) in str(info.value)
    assert "no images" in str(info.value)


def test_empty_glob_and_empty_list_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(str(tmp_path) + "/*.jpg")
    list_file = tmp_path / "files.csv"
    list_file.write_text("path,label\n")
    with pytest.raises(FileNotFoundError, match="files.csv"):
        list_images(str(list_file))


def test_nonexistent_source_raises(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError) as info:
        list_images(str(missing))
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "missing.jpg"))


def test_a_missing_source_is_said_not_to_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="^'.*photos' does not exist$"):
        list_images(str(tmp_path / "photos"))
    (tmp_path / "notes.md").write_text("not images")  # there, but none of the kinds a source can be
    with pytest.raises(FileNotFoundError, match="is not a folder, a glob, an image"):
        list_images(str(tmp_path / "notes.md"))


def test_folder_whose_name_has_glob_characters(tmp_path: Path) -> None:
    folder = tmp_path / "set[1]"
    touch(folder / "a.jpg")
    (ref,) = list_images(str(folder))
    assert ref.relpath == "a.jpg"


@pytest.mark.parametrize("name", ["files.txt", "a.jpg"])
def test_existing_file_whose_path_has_glob_characters(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "set[1]"
    touch(folder / "a.jpg")
    (folder / "files.txt").write_text("a.jpg\n")
    (ref,) = list_images(str(folder / name))
    assert ref.relpath == "a.jpg"
    assert Path(ref.uri) == (folder / "a.jpg").resolve()


def test_csv_list_with_utf8_bom(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    (tmp_path / "files.csv").write_text("path,label\na.jpg,cat\n", encoding="utf-8-sig")
    refs = list_images(str(tmp_path / "files.csv"))
    assert [(r.relpath, r.label) for r in refs] == [("a.jpg", "cat")]
