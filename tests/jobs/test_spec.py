"""IndexRequest checks and resolve_spec: how --decode meets --device-decode."""

from __future__ import annotations

import pytest

from actindex.jobs.spec import IndexRequest, resolve_spec
from actindex.jobs.worker import ModelPlan
from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.preprocess import Preprocessing


def request(**kwargs) -> IndexRequest:
    return IndexRequest(source="photos/", out="idx/", layers=("layer4",), model="resnet18", **kwargs)


def plan(decode: str) -> ModelPlan:
    return ModelPlan("random", "0" * 64, ("layer4",), Preprocessing(decode=decode), {}, {})


@pytest.mark.parametrize("preprocessing", [{"decode": "torchvision"}, Preprocessing(decode="torchvision")])
def test_device_decode_with_torchvision_decode_is_refused_in_one_line(preprocessing):
    with pytest.raises(InvalidInputError, match="drop --device-decode .* or use --decode fast"):
        request(preprocessing=preprocessing, device_decode=True)
    request(preprocessing=preprocessing, device_decode=False)  # --cpu-decode is what it does anyway


@pytest.mark.parametrize(("decode", "on_device"), [("fast", True), ("torchvision", False)])
def test_gpu_workers_decode_on_the_device_only_with_fast_decode(decode, on_device):
    spec = resolve_spec(request(preprocessing={"decode": decode}), plan(decode), "photos", gpus=True)
    assert (spec.device, spec.device_decode) == ("cuda", on_device)
    assert spec.params()["preprocessing"]["decode"] == decode  # recorded in run.json
