"""Options stated once (pipeline.options): bounds, choices and parsers checked with one-line errors naming the
flag, groups offered as their own options and gathered back into a dict."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pytest

from actindex.pipeline.errors import InvalidInputError
from actindex.pipeline.options import Option, check, comma_list, flat_options, gather, options, three_floats


class Colour(str, Enum):
    red = "red"
    blue = "blue"


@dataclass(frozen=True)
class Inner:
    size: int = Option("Side.", min=1).field(8)
    colour: str = Option("Colour.", choices=Colour).field("red")


@dataclass(frozen=True)
class Config:
    source: str = Option("Where.", positional=True).field()
    k: int = Option("Images.", flags=("--k", "-k"), min=1, unit="image per unit").field(9)
    level: float = Option(
        "A fraction.", flags=("--level",), min=0, max=1, min_open=True, unit="a fraction"
    ).field(0.5)
    names: tuple[str, ...] = Option("Names.", parse=comma_list).field(())
    colour: Colour = Option("Colour.", choices=Colour).field(Colour.red)
    workers: int | None = Option("Threads.", min=1).field(None)
    inner: Inner | dict | None = Option("", group=Inner, group_names="{}_of_inner").field(None)
    note: str = ""  # not an option

    def __post_init__(self) -> None:
        check(self)


def test_check_parses_text_and_makes_choices_members_in_a_frozen_config():
    config = Config("x", names=" a, b,,c ", colour="blue")
    assert config.names == ("a", "b", "c") and config.colour is Colour.blue
    assert Config("x", names=["a", " b"]).names == ("a", "b")  # a sequence is taken as it is, stripped
    assert Config("x", workers=None).workers is None  # None is "the default": never checked


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "--k 0: give at least 1 image per unit"),
        ({"level": 0.0}, "--level 0.0: give a fraction in (0, 1]"),
        ({"level": 1.5}, "--level 1.5: give a fraction in (0, 1]"),
        ({"workers": 0}, "--workers 0: give at least 1"),
        ({"colour": "green"}, "--colour 'green' is not one of red, blue"),
        ({"inner": {"size": 0}}, "--size-of-inner 0: give at least 1"),
        ({"inner": {"colour": "pink"}}, "--colour-of-inner 'pink' is not one of red, blue"),
        ({"inner": {"shape": 1}}, "unknown inner values ['shape']; known: size, colour"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_flag(kwargs, message):
    with pytest.raises(InvalidInputError) as info:
        Config("x", **kwargs)
    assert str(info.value) == message


def test_bounds_are_inclusive_unless_open():
    assert Config("x", k=1, level=1.0).level == 1.0
    assert Option("", min=0, min_open=True).value(0.1, "x") == 0.1
    with pytest.raises(InvalidInputError, match="--x 0: give more than 0"):
        Option("", min=0, min_open=True).value(0, "x")


def test_a_parser_error_names_the_flag():
    option = Option("Mean.", parse=three_floats)
    assert option.value("0.5, 0.25,1", "mean") == (0.5, 0.25, 1.0)
    assert option.value((0, 0, 1), "mean") == (0.0, 0.0, 1.0)
    for bad in ("1,2", "a,b,c", (1, 2, 3, 4)):
        with pytest.raises(InvalidInputError, match=r"^--mean needs three numbers"):
            option.value(bad, "mean")


def test_flags_spell_the_field_unless_given():
    assert Option("").flag("max_pixels") == "--max-pixels"
    assert Option("", flags=("--device-decode/--cpu-decode",)).flag("device_decode") == "--device-decode"
    assert Option("", flags=("--k", "-k")).flag("k") == "--k"


def test_a_field_may_restate_the_help_and_keeps_the_rest():
    shared = Option("Layers.", parse=comma_list)
    field = shared.field(None, help="Layers (default: all).")
    assert field.metadata["actindex.option"] == Option("Layers (default: all).", parse=comma_list)
    assert field.default is None


def test_flat_options_offer_a_group_as_its_own_options():
    flat = flat_options(Config)
    assert list(flat) == [
        "source",
        "k",
        "level",
        "names",
        "colour",
        "workers",
        "size_of_inner",
        "colour_of_inner",
    ]
    assert flat["size_of_inner"] == ("inner", "size", options(Inner)["size"])
    assert "note" not in flat and "inner" not in flat


def test_gather_makes_a_dict_of_the_group_options_given():
    kwargs = gather(Config, {"source": "x", "k": 3, "size_of_inner": 4, "colour_of_inner": None})
    assert kwargs == {"source": "x", "k": 3, "inner": {"size": 4}}
    assert gather(Config, {"source": "x", "size_of_inner": None}) == {"source": "x"}  # none given
    config = Config(**gather(Config, {"source": "x", "colour_of_inner": Colour.blue}))
    assert config.inner == {"colour": "blue"}  # enums as their text: run.json's form
    with pytest.raises(InvalidInputError, match="give inner or size_of_inner, not both"):
        gather(Config, {"source": "x", "inner": Inner(), "size_of_inner": 4})


def test_comma_list_and_three_floats():
    assert comma_list("layer4, fc") == ("layer4", "fc") and comma_list("") == () and comma_list(" , ") == ()
    assert three_floats("0.485,0.456,0.406") == (0.485, 0.456, 0.406)
