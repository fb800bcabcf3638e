"""Model names and weights (pipeline/models.py, pipeline/model_args.py): what --weights means for each kind
of model, the weightless skeleton the driver checks names on, and one-line refusals."""

from __future__ import annotations

import pytest

from actindex.pipeline.errors import InvalidInputError, UnknownNameError
from actindex.pipeline.model_args import check_model_args, random_weights, weights_label, weights_to_load
from actindex.pipeline.models import model_skeleton

PYTHON = "python:tests.conftest:PlantedNet"


@pytest.mark.parametrize(
    ("model", "weights", "label"),
    [
        ("resnet18", None, "DEFAULT"),  # pretrained unless asked otherwise
        ("resnet18", "DEFAULT", "DEFAULT"),
        ("resnet18", "random", "random"),
        ("timm:resnet18", None, "DEFAULT"),
        ("efficientnet_lite0", None, "builtin"),
        ("efficientnet_lite0", "random", "random"),
        ("model.ts", None, "torchscript"),
        (PYTHON, None, "factory"),
        ("resnet18", "w.pth", "w.pth"),
    ],
)
def test_weights_label_and_back(model, weights, label):
    assert weights_label(model, weights) == label
    assert weights_to_load(model, label) == (None if weights == "DEFAULT" else weights)


def test_an_index_made_before_factory_reloads_a_python_model_with_its_own_weights():
    assert weights_to_load(PYTHON, "random") is None
    assert not random_weights({"model": PYTHON, "weights": "random"})
    assert random_weights({"model": "resnet18", "weights": "random"})


def test_random_weights_are_refused_for_models_with_their_own():
    with pytest.raises(InvalidInputError, match="brings its own weights"):
        check_model_args(PYTHON, "random", trust_code=True)
    check_model_args("resnet18", "random", trust_code=False)


def test_the_skeleton_has_the_model_s_modules_and_no_weights():
    skeleton = model_skeleton("resnet50")
    assert skeleton.fc.weight.is_meta and skeleton.fc.weight.shape == (1000, 2048)
    assert model_skeleton(PYTHON) is None  # code the user trusts runs where the model loads, not here


def test_an_unknown_model_names_the_closest_ones_the_built_in_among_them():
    with pytest.raises(UnknownNameError, match="did you mean efficientnet_lite0"):
        model_skeleton("efficientnet_lite")
    with pytest.raises(UnknownNameError, match="timm has no model 'convnext_tinyy'"):
        model_skeleton("timm:convnext_tinyy")
