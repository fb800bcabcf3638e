"""No silent random network, and mistakes answered at once (issue 20): torchvision and timm models are
pretrained unless --weights random says otherwise; where the pretrained weights cannot be had the job
refuses in one line before any image is read; a typo'd model or layer is refused before Ray starts or the
images are listed. Offline here means an empty TORCH_HOME and HF_HOME and a proxy on a closed port."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
import torch
import torchvision

from actindex.pipeline.models import load_model, state_dict_sha256
from tests.jobs.test_cli import invoke
from tests.ports import refused_port

SMALL = ["--resize", "36", "--crop", "32", "--executor", "local"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No internet and empty caches: torch's and Hugging Face's caches in tmp_path, every HTTP(S) request
    through a proxy on a port this test holds closed. Yields TORCH_HOME."""
    import huggingface_hub.constants

    with refused_port() as port:
        proxy = f"http://127.0.0.1:{port}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        # read once at import: the Hub's cache, and urllib's opener (built with the proxies of its first use)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setattr(urllib.request, "_opener", None)
        yield tmp_path / "torch"


@pytest.fixture
def nothing_read(monkeypatch):
    """Fails the test if the job lists the images or starts an executor (Ray or the local one)."""

    def too_late(*args, **kwargs):
        raise AssertionError("the images were listed or the executor started before the refusal")

    monkeypatch.setattr("actindex.jobs.indexing._start", too_late)
    monkeypatch.setattr("actindex.jobs.indexing._list", too_late)


def test_offline_default_weights_are_refused_in_one_line_before_any_image_is_read(
    offline, nothing_read, natural_dataset, tmp_path
):
    result = invoke(
        "index", natural_dataset, "--model", "resnet18", "--layers", "layer4", "--out", tmp_path / "x"
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, lines
    cached = offline / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "could not download the DEFAULT weights of resnet18" in lines[0]
    for fix in ("--weights FILE.pth", str(cached), "--weights random"):
        assert fix in lines[0], fix
    assert not (tmp_path / "x").exists() and not cached.exists()


def test_offline_timm_default_weights_are_refused_in_one_line(
    offline, nothing_read, natural_dataset, tmp_path
):
    args = ["--model", "timm:resnet18", "--layers", "layer4", "--out", tmp_path / "x"]
    result = invoke("index", natural_dataset, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "DEFAULT weights of timm:resnet18" in lines[0], lines
    assert "Hugging Face cache" in lines[0] and "--weights random" in lines[0]


def test_default_weights_planted_in_the_torch_cache_are_the_ones_used(offline, natural_dataset, tmp_path):
    torch.manual_seed(1)  # not actindex's seed: these weights are not the random network's
    planted = torchvision.models.resnet18(weights=None).state_dict()
    name = torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    (offline / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(planted, offline / "hub" / "checkpoints" / name)
    module = torchvision.models.resnet18(weights=None)
    module.load_state_dict(planted)

    result = invoke(
        "index", natural_dataset, "--model", "resnet18", "--layers", "layer4", "--out", tmp_path / "x", *SMALL
    )
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "x" / "run.json").read_text())["params"]
    assert params["weights"] == "DEFAULT" and params["weights_sha256"] == state_dict_sha256(module)
    assert params["weights_sha256"] != load_model("resnet18", "random").weights_sha256
    assert params["preprocessing"]["interpolation"] == "bilinear"  # ResNet18_Weights' transforms
    assert f"pretrained weights (DEFAULT), sha256 {params['weights_sha256'][:12]}" in result.output
    assert "random weights" not in result.output


def test_random_weights_are_a_choice_that_every_output_names(natural_dataset, tmp_path, monkeypatch):
    out = tmp_path / "x"
    result = invoke(
        "index",
        natural_dataset,
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--layers",
        "layer4",
        "--out",
        out,
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    params = json.loads((out / "run.json").read_text())["params"]
    assert (
        params["weights"] == "random"
        and params["weights_sha256"] == load_model("resnet18", "random").weights_sha256
    )
    assert "model resnet18, random weights (--weights random, seeded)" in result.output  # the plan
    summary = next(line for line in result.output.splitlines() if line.startswith("14 images:"))
    assert "random weights (--weights random)" in summary
    top = invoke("top", out, "--layer", "layer4", "--unit", "3", "--k", "2")
    assert top.exit_code == 0 and "random weights" in top.output.splitlines()[0], top.output

    drawn: list[str] = []
    monkeypatch.setattr("actindex.queries.grid._text", lambda image, xy, text, font, fill: drawn.append(text))
    grid = invoke("grid", out, "--layer", "layer4", "--units", "0-1", "--k", "2", "--out", tmp_path / "g.png")
    assert grid.exit_code == 0, grid.output
    assert sum("random weights" in text for text in drawn) == 2  # one caption per unit

    report = invoke(
        "report", out, "--out", tmp_path / "site", "--mask", "none", "--units", "0-1", "--no-progress"
    )
    assert report.exit_code == 0, report.output
    lede = re.search(r'<p class="lede">(.*?)</p>', (tmp_path / "site" / "index.html").read_text()).group(1)
    assert "random weights" in lede


def test_a_rerun_of_a_random_index_without_weights_says_how_to_continue_it(natural_dataset, tmp_path):
    args = [
        "index",
        natural_dataset,
        "--model",
        "resnet18",
        "--layers",
        "layer4",
        "--out",
        tmp_path / "x",
        *SMALL,
    ]
    assert invoke(*args, "--weights", "random", "--no-progress").exit_code == 0
    refused = invoke(*args)
    assert refused.exit_code == 2
    assert (
        "weights: random -> DEFAULT" in refused.output and "--weights random continues it" in refused.output
    )


@pytest.mark.parametrize(
    ("model", "layers", "said"),
    [
        ("resnet18", "layer5", "layer 'layer5' not found; did you mean layer4"),
        ("resnet1", "layer4", "unknown model 'resnet1'; did you mean resnet18"),
        ("efficientnet_lite", "blocks", "unknown model 'efficientnet_lite'; did you mean efficientnet_lite0"),
        ("efficientnet_lite0", "block", "layer 'block' not found; did you mean blocks"),
        ("timm:resnet18", "layer5", "layer 'layer5' not found"),
        ("timm:resnet_18", "layer4", "timm has no model 'resnet_18'"),
    ],
)
def test_unknown_models_and_layers_are_refused_before_the_images_are_listed_or_ray_starts(
    offline, nothing_read, natural_dataset, tmp_path, model, layers, said
):
    result = invoke("index", natural_dataset, "--model", model, "--layers", layers, "--out", tmp_path / "x")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], lines
    assert not (tmp_path / "x").exists()


def test_random_weights_are_refused_for_models_that_bring_their_own(natural_dataset, tmp_path):
    args = ["--model", "python:tests.conftest:PlantedNet", "--trust-code", "--weights", "random"]
    result = invoke("index", natural_dataset, *args, "--layers", "head", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "brings its own weights" in result.output, result.output
