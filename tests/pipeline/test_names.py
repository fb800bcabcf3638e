"""Unit names: the model's classes for its output layer only, names files, refusals that name the fix."""

from __future__ import annotations

import pytest
import torch
import torchvision

from actindex.jobs.demo import CLASS_UNITS
from actindex.pipeline.errors import InvalidInputError, MissingInputError, UnknownNameError
from actindex.pipeline.layers import output_layers
from actindex.pipeline.names import (
    NamesFile,
    model_categories,
    parse_names_option,
    read_names_options,
    unit_names,
)
from tests.conftest import PlantedNet


def test_the_builtin_model_names_its_classifier_units_by_imagenet_class():
    categories = model_categories("efficientnet_lite0", "builtin", None)
    assert len(categories) == 1000
    assert (categories[967], categories[282], categories[872]) == ("espresso", "tiger cat", "tripod")
    assert {unit: categories[unit] for unit in CLASS_UNITS} == CLASS_UNITS  # what the demo promises


def test_default_weights_carry_their_classes_and_other_weights_none():
    assert model_categories("resnet18", "DEFAULT", None)[282] == "tiger cat"  # weights.meta, no download
    for model, weights in [
        ("resnet18", "random"),
        ("resnet18", "my.pth"),
        ("efficientnet_lite0", "my.pth"),  # the built-in architecture with the user's own weights
        ("python:tests.conftest:PlantedNet", "random"),
        ("model.ts", "torchscript"),
    ]:
        assert model_categories(model, weights, None) is None, (model, weights)


def test_timm_imagenet_weights_carry_their_classes():
    import timm

    module = timm.create_model("resnet18", pretrained=False)  # the DEFAULT weights' config, not the weights
    categories = model_categories("timm:resnet18", "DEFAULT", module)
    assert (categories[0], categories[282], categories[967]) == ("tench", "tiger cat", "espresso")
    assert model_categories("timm:resnet18", "random", module) is None


def test_the_output_layer_is_the_one_that_returns_the_models_output():
    assert output_layers(torchvision.models.resnet18(), (64, 64)) == ("fc",)
    assert output_layers(PlantedNet(), (64, 64)) == ("head", "head.2")  # a Sequential and its last Linear
    # squeezenet's logits come out of torch.flatten in forward(), not out of a module
    assert output_layers(torchvision.models.squeezenet1_0(), (64, 64)) == ()

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            out = self.fc(x.mean((2, 3)))
            return out, out

    assert output_layers(Pair(), (8, 8)) == ()  # a tuple is no (B, C) output


def test_classes_name_the_output_layer_only():
    classes = [f"class {i}" for i in range(4)]
    table = unit_names({"conv": 4, "fc": 4}, ("fc",), classes, [])
    assert table.to_pylist() == [{"layer": "fc", "unit": i, "name": f"class {i}"} for i in range(4)]
    # an output layer with another number of units is not the classes' layer: no names, none made up
    assert unit_names({"fc": 5}, ("fc",), classes, []).num_rows == 0
    assert unit_names({"conv": 4, "fc": 4}, ("fc",), None, []).num_rows == 0


def test_names_files_replace_stored_names_which_replace_classes():
    classes = ["a", "b"]
    stored = unit_names({"conv": 3, "fc": 2}, ("fc",), None, [NamesFile("conv", "c.txt", ("x", None, "z"))])
    assert [(r["layer"], r["unit"], r["name"]) for r in stored.to_pylist()] == [
        ("conv", 0, "x"),
        ("conv", 2, "z"),
    ]  # a blank line: no row, the unit stays unnamed
    kept = unit_names({"conv": 3, "fc": 2}, ("fc",), classes, [], stored)
    assert [(r["layer"], r["unit"], r["name"]) for r in kept.to_pylist()] == [
        ("conv", 0, "x"),
        ("conv", 2, "z"),
        ("fc", 0, "a"),
        ("fc", 1, "b"),
    ]
    renamed = unit_names({"conv": 3, "fc": 2}, ("fc",), classes, [NamesFile(None, "n.txt", ("p", "q"))], kept)
    assert [r["name"] for r in renamed.to_pylist()] == ["x", "z", "p", "q"]


def test_names_that_do_not_fit_are_refused_with_the_fix():
    channels, outputs = {"conv": 3, "fc": 2}, ("fc",)
    with pytest.raises(InvalidInputError, match="3 lines for the 2 units of layer 'fc'; write one name per"):
        unit_names(channels, outputs, None, [NamesFile(None, "n.txt", ("a", "b", "c"))])
    with pytest.raises(UnknownNameError, match=r"layer 'fc9' is not indexed \(layers: conv, fc\)"):
        unit_names(channels, outputs, None, [NamesFile("fc9", "n.txt", ("a", "b"))])
    with pytest.raises(
        InvalidInputError, match=r"output layer \(head\), which is not indexed .* --names LAYER"
    ):
        unit_names(channels, ("head",), None, [NamesFile(None, "n.txt", ("a", "b"))])
    with pytest.raises(InvalidInputError, match="output is not one .* --names LAYER=FILE"):
        unit_names(channels, (), None, [NamesFile(None, "n.txt", ("a", "b"))])


def test_names_options_are_read_and_checked(tmp_path):
    (tmp_path / "fc.txt").write_text("\ufefftench\n\n  goldfish \n")  # a BOM, a blank line, spaces
    (tmp_path / "a=b.txt").write_text("x\n")
    assert parse_names_option("layer4=concepts.txt") == ("layer4", "concepts.txt")
    assert parse_names_option(str(tmp_path / "a=b.txt")) == (None, str(tmp_path / "a=b.txt"))
    files = read_names_options([str(tmp_path / "fc.txt"), f"conv={tmp_path / 'a=b.txt'}"])
    assert files == [
        NamesFile(None, str(tmp_path / "fc.txt"), ("tench", None, "goldfish")),
        NamesFile("conv", str(tmp_path / "a=b.txt"), ("x",)),
    ]
    with pytest.raises(MissingInputError, match="no such file"):
        read_names_options([str(tmp_path / "missing.txt")])
    with pytest.raises(InvalidInputError, match="two files for layer 'conv'"):
        read_names_options([f"conv={tmp_path / 'fc.txt'}", f"conv={tmp_path / 'fc.txt'}"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        read_names_options([str(tmp_path / "latin1.txt")])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InvalidInputError, match="names no unit"):
        read_names_options([str(tmp_path / "empty.txt")])
