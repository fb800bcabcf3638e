"""Every command through typer's CliRunner: exit codes and what the user reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.csv
import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from actindex.jobs.cli import app, parse_units

runner = CliRunner()
PLANTED = "python:tests.conftest:PlantedNet"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_index_prints_a_summary(planted_cli_index):
    _, output = planted_cli_index
    assert "9 images: 9 indexed, 0 failed" in output
    assert "54 activation rows, 18 top-k rows" in output


def test_top_lists_the_planted_images_in_order(planted_cli_index):
    out, _ = planted_cli_index
    assert_top_lists_the_red_images_in_order(out)


def assert_top_lists_the_red_images_in_order(out) -> None:
    """`actindex top` of the planted red detector (relu1 unit 0) on an index of the planted images."""
    result = invoke("top", out, "--layer", "relu1", "--unit", "0", "--k", "3")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if ".png" in line]
    assert [next(n for n in ("red0", "red1", "red2") if n in line) for line in lines] == [
        "red0",
        "red1",
        "red2",
    ]


def test_top_rejects_an_out_of_range_unit_and_a_missing_layer(planted_cli_index):
    out, _ = planted_cli_index
    result = invoke("top", out, "--layer", "relu1", "--unit", "7")
    assert result.exit_code == 2 and "unit 7 is out of range" in result.output and "0-1" in result.output
    result = invoke("top", out, "--layer", "x'; drop table images; --", "--unit", "0")
    assert result.exit_code == 2 and "not in this index" in result.output and "relu1" in result.output
    assert invoke("top", out, "--layer", "relu1", "--unit", "0").exit_code == 0  # nothing was dropped


def test_grid_writes_a_sheet_whose_first_tile_is_red(planted_cli_index, tmp_path):
    out, _ = planted_cli_index
    png = tmp_path / "grid.png"
    result = invoke(
        "grid", out, "--layer", "relu2", "--units", "0-1", "--k", "3", "--out", png, "--tile", "64"
    )
    assert result.exit_code == 0, result.output
    sheet = Image.open(png).convert("RGB")
    label_w, tile = 64 + 16, 64
    assert sheet.width == label_w + 3 * (tile + 4)
    # the red unit's best crop is centred on the red square: its middle pixel is red
    r, g, b = sheet.getpixel((label_w + tile // 2, 2 + tile // 2))
    assert r > 150 and g < 60 and b < 60
    assert sheet.height > 2 * tile


def test_sql_prints_tables_and_writes_csv_and_parquet(planted_cli_index, tmp_path):
    out, _ = planted_cli_index
    result = invoke("sql", out, "SELECT layer, count(*) AS n FROM activations GROUP BY 1 ORDER BY 1")
    assert result.exit_code == 0, result.output
    assert "head" in result.output and "relu2" in result.output and "18" in result.output
    invoke("sql", out, "SELECT * FROM topk ORDER BY layer, unit, rank", "--out", tmp_path / "t.csv")
    assert pyarrow.csv.read_csv(tmp_path / "t.csv").num_rows == 18
    invoke("sql", out, "SELECT * FROM images", "--out", tmp_path / "i.parquet")
    assert pq.read_table(tmp_path / "i.parquet").num_rows == 9


def test_sql_error_is_one_line_with_exit_code_2(planted_cli_index):
    out, _ = planted_cli_index
    result = invoke("sql", out, "SELECT nope FROM activations")
    assert result.exit_code == 2 and result.output.startswith("Error:") and "Traceback" not in result.output


def test_not_an_index(tmp_path):
    result = invoke("top", tmp_path, "--layer", "a", "--unit", "0")
    assert result.exit_code == 2 and "is not an actindex index" in result.output


def test_index_errors_name_the_fix(ray_local, natural_dataset, tmp_path):
    # the layer is checked where the model loads: in the model actor on Ray, in this process without
    result = invoke(
        "index", natural_dataset, "--out", tmp_path / "a", "--model", "resnet18", "--layers", "layer5"
    )
    assert (
        result.exit_code == 2
        and "did you mean" in result.output
        and "actindex layers resnet18" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1
    result = invoke(
        "index",
        natural_dataset,
        "--out",
        tmp_path / "b",
        "--model",
        "resnet1",
        "--layers",
        "x",
        "--executor",
        "local",
    )
    assert (
        result.exit_code == 2 and "unknown model 'resnet1'" in result.output and "resnet18" in result.output
    )
    result = invoke(
        "index", natural_dataset, "--out", tmp_path / "c", "--layers", "fc", "--weights", "no.pth"
    )
    assert result.exit_code == 2 and "weights file 'no.pth' does not exist" in result.output
    result = invoke("index", tmp_path / "nothing", "--out", tmp_path / "d", "--layers", "fc")
    assert result.exit_code == 2 and "nothing" in result.output
    assert not any((tmp_path / name).exists() for name in "abcd")  # no empty index directory is left


def test_layers_lists_shapes_and_receptive_fields():
    result = invoke("layers", "resnet18", "--pattern", "layer?")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "layer4" in line)
    assert "512" in row and "7x7" in row and "435x435" in row and "32x32" in row
    assert "layer1.0" not in result.output


def test_demo_runs_end_to_end(tmp_path):
    result = invoke("demo", "--out", tmp_path / "demo", "--executor", "local", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "classifier unit 967 (espresso): top image coffee.png" in result.output
    assert Image.open(tmp_path / "demo" / "grid_classes.png").width > 400
    data = (tmp_path / "demo" / "report" / "layers" / "layer=classifier.js").read_text()
    assert '"unit":967,"name":"espresso"' in data and "report/index.html" in result.output


def test_help_is_fast_and_imports_no_torch_or_ray():
    heavy = "('torch', 'ray', 'duckdb')"
    code = f"import sys, actindex.jobs.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("demo", "layers", "index", "top", "grid", "sql"):
        assert command in result.output
        assert invoke(command, "--help").exit_code == 0


def test_parse_units():
    assert parse_units("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_units("5") == [5]


def test_status_reports_shards_images_and_dataset_changes(planted_cli_index):
    out, _ = planted_cli_index
    result = invoke("status", out)
    assert result.exit_code == 0, result.output
    assert "3 done" in result.output and "9 ok, 0 error" in result.output
    assert "9 images: 0 new, 0 missing" in result.output and "relu1, relu2, head" in result.output


def test_strict_fails_when_an_image_fails(natural_dataset, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes((natural_dataset / "b" / "img00.png").read_bytes())
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    args = ["index", folder, "--out", tmp_path / "idx", "--model", "resnet18", "--layers", "layer4"]
    args += ["--weights", "random", "--resize", "36", "--crop", "32", "--executor", "local", "--no-progress"]
    lenient = invoke(*args)
    assert lenient.exit_code == 0 and "1 failed (see: actindex sql" in lenient.output
    assert invoke(*args, "--strict").exit_code == 1


def test_code_executing_models_need_trust_code(planted_dataset, tmp_path):
    folder, _ = planted_dataset
    result = invoke(
        "index",
        folder,
        "--out",
        tmp_path / "idx",
        "--model",
        "python:tests.conftest:PlantedNet",
        "--layers",
        "head",
    )
    assert result.exit_code == 2 and "--trust-code" in result.output
    assert not (tmp_path / "idx").exists()


def test_a_pickled_full_model_is_refused_as_weights(ray_local, natural_dataset, tmp_path):
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18(), tmp_path / "full_model.pth")  # pickles the module's classes
    result = invoke(
        "index", natural_dataset, "--out", tmp_path / "idx", "--model", "resnet18",
        "--layers", "fc", "--weights", tmp_path / "full_model.pth",
    )  # fmt: skip
    assert result.exit_code == 2 and "would run code" in result.output and "state_dict()" in result.output
    assert "Traceback" not in result.output


def test_python_m_actindex_is_the_cli_without_an_import_cycle(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "actindex", "index", "--help"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert (
        done.returncode == 0
        and "Usage: python -m actindex index [OPTIONS]" in done.stdout
        and "RuntimeWarning" not in done.stderr
    )
    older = subprocess.run(
        [sys.executable, "-m", "actindex.jobs.index", "--help"], capture_output=True, text=True, env=env
    )
    assert older.returncode == 0, older.stderr
    assert "Usage: python -m actindex.jobs.index [OPTIONS]" in older.stdout
    assert "RuntimeWarning" not in older.stderr
    for choices in (
        "<ray|local>",
        "<auto|cpu|cuda>",
        "<auto|bf16|fp16|fp32>",
        "<dense|topk>",
        "<nearest|bilinear",
    ):
        assert choices in done.stdout, choices  # Typer lists the enums' values
    command = [sys.executable, "-m", "actindex", "index", "x", "--out", "y", "--layers", "fc"]
    command += ["--precision", "int8"]
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 2 and "'int8' is not one of" in bad.stderr


def test_a_bug_shows_its_traceback_and_user_errors_do_not(natural_dataset, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr("actindex.jobs.indexing.plan_work", broken)
    args = ["--model", "resnet18", "--weights", "random", "--layers", "fc", "--executor", "local"]
    args += ["--no-progress"]
    result = invoke("index", natural_dataset, "--out", tmp_path / "idx", *args)
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)  # not the user's fault: exit 1
    assert "Error: an internal invariant broke" not in result.output


def test_a_resume_with_another_resolved_precision_refuses_in_one_line(natural_dataset, tmp_path):
    args = ["index", natural_dataset, "--out", tmp_path / "idx", "--model", "resnet18", "--layers", "layer4"]
    args += ["--weights", "random", "--resize", "36", "--crop", "32", "--executor", "local", "--no-progress"]
    assert invoke(*args, "--precision", "fp32").exit_code == 0
    (tmp_path / "idx" / "_done" / "shard-00000.json").unlink()  # as if the first run had been killed
    refused = invoke(*args, "--precision", "bf16")
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "precision: fp32 -> bf16" in lines[0] and "--overwrite" in lines[0]
    assert invoke(*args).exit_code == 0  # auto resolves to fp32 on this CPU, as recorded: it resumes


def test_a_rerun_with_nothing_to_do_starts_no_ray(natural_dataset, tmp_path):
    args = [sys.executable, "-m", "actindex", "index", str(natural_dataset), "--out", str(tmp_path / "idx")]
    args += ["--model", "resnet18", "--weights", "random", "--layers", "layer4", "--resize", "36"]
    args += ["--crop", "32", "--no-progress"]
    first = invoke(*args[3:], "--executor", "local")  # in this process: only the rerun needs a fresh one
    assert first.exit_code == 0, first.output
    code = (
        "import sys, runpy; sys.argv = " + repr(["actindex", *args[3:]]) + "\n"
        "try:\n    runpy.run_module('actindex', run_name='__main__')\nexcept SystemExit as exit:\n"
        "    assert not exit.code, exit.code\nassert 'ray' not in sys.modules and 'torch' in sys.modules\n"
        "print('no ray')"
    )
    rerun = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert rerun.returncode == 0 and "no ray" in rerun.stdout, rerun.stderr
    assert "0 new this run" in rerun.stdout


def test_decode_torchvision_with_device_decode_is_refused_in_one_line(natural_dataset, tmp_path):
    args = ["index", natural_dataset, "--out", tmp_path / "idx", "--layers", "fc", "--executor", "local"]
    result = invoke(*args, "--decode", "torchvision", "--device-decode")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "drop --device-decode" in lines[0] and "--decode fast" in lines[0]
    assert invoke(*args, "--decode", "pil").exit_code == 2  # Typer lists the choices
    assert not (tmp_path / "idx").exists()


def test_default_weights_offline_give_one_line_naming_the_fix(natural_dataset, tmp_path, monkeypatch):
    import urllib.error

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)  # the worker's download
    monkeypatch.setattr(
        "torch.hub.download_url_to_file", offline
    )  # the driver's (pipeline.models.ensure_pretrained)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    for args in (
        ["layers", "resnet18", "--weights", "DEFAULT"],
        ["index", natural_dataset, "--out", tmp_path / "idx", "--model", "resnet18", "--weights", "DEFAULT",
         "--layers", "layer4", "--executor", "local", "--no-progress"],
    ):  # fmt: skip
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output
        assert "could not download the DEFAULT weights of resnet18" in lines[0]
        assert "resnet18-f37072fd.pth" in lines[0] and "--weights FILE.pth" in lines[0]


def test_a_mismatch_is_refused_before_the_images_are_listed_or_the_model_loaded(
    planted_cli_index, tmp_path, monkeypatch
):
    import shutil

    out = tmp_path / "idx"
    shutil.copytree(planted_cli_index[0], out)
    (out / "_done" / "shard-00000.json").unlink()  # a rerun would have work to do

    def too_late(*args, **kwargs):
        raise AssertionError("the model was loaded or the images listed before the refusal")

    monkeypatch.setattr("actindex.jobs.indexing._start", too_late)
    monkeypatch.setattr("actindex.jobs.indexing._list", too_late)
    source = str(json.loads((out / "run.json").read_text())["source"])
    base = ["index", source, "--out", out, "--model", PLANTED, "--layers", "relu1,relu2,head", "--trust-code"]
    base += ["--executor", "local", "--no-progress", "--shard-size", "4"]
    prep = [
        "--resize",
        "64",
        "--crop",
        "64",
        "--interpolation",
        "nearest",
        "--mean",
        "0,0,0",
        "--std",
        "1,1,1",
    ]
    for extra, said in [
        (["--k", "5", *prep], "k: 3 -> 5"),
        (["--k", "3", "--resize", "72", "--crop", "64"], "preprocessing.resize: 64 -> 72"),
        (["--k", "3", *prep, "--store", "topk"], "store: dense -> topk"),
        (["--k", "3", *prep, "--precision", "bf16"], "precision: fp32 -> bf16"),
    ]:
        result = invoke(*base, *extra)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and said in lines[0] and "--overwrite" in lines[0], lines
    result = invoke(*base[:7], "relu1,head", *base[8:], "--k", "3", *prep)
    assert (
        result.exit_code == 2 and "layers: ['head', 'relu1', 'relu2'] -> ['head', 'relu1']" in result.output
    )


def test_sql_help_lists_every_catalog_macro_with_its_line():
    from actindex.queries.catalog import macros

    result = invoke("sql", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for macro in macros():
        assert f"{macro.signature}: {macro.summary}" in text, macro.name


def test_sql_runs_the_catalog_and_compares_two_indexes(planted_cli_index):
    out, _ = planted_cli_index
    query = "SELECT unit, dominant_label, purity FROM label_selectivity('relu2', k := 3) ORDER BY unit"
    result = invoke("sql", out, query)
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:4] for line in result.output.splitlines() if line.count("│") >= 4]
    assert [[cell.strip() for cell in row] for row in rows] == [["0", "red", "1"], ["1", "edge", "1"]]
    drift = "SELECT unit, drift FROM topk_drift('head') ORDER BY unit"
    result = invoke("sql", out, "--compare", out, drift)
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:3] for line in result.output.splitlines() if line.count("│") >= 3]
    assert [[cell.strip() for cell in row] for row in rows] == [["0", "0"], ["1", "0"]]  # itself: no drift
    result = invoke("sql", out, drift)
    assert result.exit_code == 2 and "no second index to compare with" in result.output
    result = invoke("sql", out, "SELECT * FROM image_units('relu1', 'red/nope.png')")
    assert result.exit_code == 2 and "red/nope.png is not in this index" in result.output


def test_workers_help_says_what_plan_actors_does():
    from actindex.jobs.ray_executor import plan_actors

    result = invoke("index", "--help")
    text = " ".join(result.output.replace("│", " ").split())
    assert "Default: one per GPU, or one per node of a CPU cluster (a local Ray is one node)" in text
    node = lambda i, cpus, gpus: {"NodeID": f"n{i}", "Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}  # noqa: E731
    assert len(plan_actors([node(0, 8, 2), node(1, 8, 1)], "cuda", None)) == 3  # one per GPU
    assert len(plan_actors([node(0, 8, 0), node(1, 4, 0)], "cpu", None)) == 2  # one per node
    assert len(plan_actors([node(0, 8, 2)], "cuda", 5)) == 2  # at most one per GPU


def test_layers_says_which_modules_it_skipped_and_why():
    result = invoke("layers", "vit_b_16", "--pattern", "encoder.layers.*")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert (
        "skipped 12 modules that output (B, N, C) token sequences (e.g. (1, 197, 768)), not feature maps"
        in text
    )
    assert "encoder.layers.encoder_layer_0, encoder.layers.encoder_layer_1" in text


def test_sql_notes_that_an_unlabelled_index_has_no_purity(planted_dataset, tmp_path):
    folder, _ = planted_dataset
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(folder.rglob("*.png"))[:4]:
        (flat / path.name).write_bytes(path.read_bytes())
    args = [
        "--model",
        PLANTED,
        "--trust-code",
        "--layers",
        "relu1",
        "--k",
        "2",
        "--resize",
        "16",
        "--crop",
        "16",
    ]
    assert (
        invoke(
            "index", flat, "--out", tmp_path / "idx", *args, "--executor", "local", "--no-progress"
        ).exit_code
        == 0
    )
    result = invoke("sql", tmp_path / "idx", "SELECT unit, purity FROM label_selectivity('relu1')")
    assert result.exit_code == 0, result.output
    assert "note: no image of this index has a label, so purity is NULL" in " ".join(result.output.split())
    assert "note:" not in invoke("sql", tmp_path / "idx", "SELECT count(*) FROM images").output
