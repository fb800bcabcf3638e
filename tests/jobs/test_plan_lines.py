"""What a run will compute is said before it computes anything (jobs/plan_lines.py): the layers, the
weights and their hash, the decoding and preprocessing, and globs that matched containers."""

from __future__ import annotations

import sys

from actindex.jobs.indexing import run_index
from actindex.jobs.spec import IndexRequest
from actindex.pipeline.decode import Decoder
from actindex.pipeline.models import load_model


def test_the_plan_is_printed_before_the_first_image_is_decoded(
    natural_dataset, tmp_path, monkeypatch, capsys
):
    decode = Decoder.__call__

    def noted(self, uri):
        print("DECODING", file=sys.stderr, flush=True)
        return decode(self, uri)

    monkeypatch.setattr(Decoder, "__call__", noted)
    request = IndexRequest(
        source=str(natural_dataset), out=str(tmp_path / "idx"), model="resnet18", weights="random",
        layers=("layer*", "fc"), preprocessing={"resize": 36, "crop": 32}, executor="local", progress=True,
    )  # fmt: skip
    run_index(request)
    lines = capsys.readouterr().err.splitlines()
    plan = lines[: lines.index("DECODING")]
    sha = load_model("resnet18", "random").weights_sha256[:12]
    assert plan[0] == f"actindex: model resnet18, random weights (--weights random, seeded), sha256 {sha}"
    assert plan[1:6] == [
        "actindex: layer layer1: Sequential, 64 units, feature map 8x8, receptive field 43x43",
        "actindex: layer layer2: Sequential, 128 units, feature map 4x4, receptive field 99x99",
        "actindex: layer layer3: Sequential, 256 units, feature map 2x2, receptive field 211x211",
        "actindex: layer layer4: Sequential, 512 units, feature map 1x1, receptive field 435x435",
        "actindex: layer fc: Linear, 1,000 units, feature map 1x1, receptive field the whole image",
    ]
    assert plan[6] == (
        "actindex: decode fast on the CPU (Pillow); preprocessing: resize 36, crop 32, bilinear, "
        "mean 0.485,0.456,0.406, std 0.229,0.224,0.225"
    )
    assert plan[7].startswith(
        "actindex: note: --layers 'layer*' matched 4 containers (layer1, layer2, layer3, layer4)"
    )
    assert plan[7].endswith("use --layers 'layer*.*'")


def test_no_plan_without_progress(natural_dataset, tmp_path, capsys):
    request = IndexRequest(
        source=str(natural_dataset), out=str(tmp_path / "idx"), model="resnet18", weights="random",
        layers=("layer4",), preprocessing={"resize": 36, "crop": 32}, executor="local", progress=False,
    )  # fmt: skip
    run_index(request)
    assert "actindex:" not in capsys.readouterr().err
