"""The CLI's options are the library's (jobs.cli_options): every command built from a config offers each of
its options with the config's default and help, and a config's checks answer on the command line in one
line."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Annotated

import click
import pytest
import typer
from typer.testing import CliRunner

from actindex.jobs.benchmark import BenchConfig
from actindex.jobs.cli import app
from actindex.jobs.cli_options import REQUIRED, parameters, with_config
from actindex.jobs.spec import RF_GATES, IndexRequest
from actindex.pipeline.options import Option, check, flat_options
from actindex.pipeline.patterns import LAYERS
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.topk import K
from actindex.queries.api import Index
from actindex.queries.db import INDEX
from actindex.queries.masks import THRESHOLD
from actindex.queries.report import ReportConfig
from actindex.queries.sheet import GridOptions

COMMANDS = typer.main.get_command(app).commands
CONFIGS = {"index": IndexRequest, "grid": GridOptions, "report": ReportConfig, "bench": BenchConfig}


def library_default(cls: type, name: str):
    """The default `cls` gives option `name` (a group's options: None, "keep the default")."""
    field_name, key, _ = flat_options(cls)[name]
    if key is not None:
        return None
    field = next(f for f in dataclasses.fields(cls) if f.name == field_name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED if field.default is dataclasses.MISSING else field.default


def drift(command: click.Command, cls: type) -> list[str]:
    """What `command` says unlike the options of `cls`: an option missing, another default or help."""
    params = {p.name: p for p in command.params}
    found = []
    for name, (_, _, option) in flat_options(cls).items():
        param = params.get(name)
        if param is None:
            found.append(f"{name}: not a parameter of {command.name}")
            continue
        want, got = library_default(cls, name), param.default
        if want is REQUIRED:
            want, got = "required", "required" if param.required else got
        elif option.parse is not None and isinstance(got, str):
            got = option.parse(got)  # the command line's text for the config's value
        if getattr(got, "value", got) != getattr(want, "value", want):
            found.append(f"{name}: default {got!r} on the command line, {want!r} in {cls.__name__}")
        if param.help != option.help:
            found.append(
                f"{name}: help {param.help!r} on the command line, {option.help!r} in {cls.__name__}"
            )
    return found


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_commands_defaults_and_help_are_its_configs(name):
    assert drift(COMMANDS[name], CONFIGS[name]) == []


def test_a_default_changed_in_one_place_only_is_caught():
    hand_written = typer.Typer()

    @hand_written.command()
    def grid(k: Annotated[int, typer.Option("--k", "-k", help=K.help)] = 8) -> None:
        """A grid command whose --k was written by hand."""

    found = drift(typer.main.get_command(hand_written), GridOptions)
    assert "k: default 8 on the command line, 9 in GridOptions" in found
    assert "tile: not a parameter of grid" in found


def test_the_commands_without_a_config_share_the_librarys_options():
    def params(command: str) -> dict[str, click.Parameter]:
        return {p.name: p for p in COMMANDS[command].params}

    assert params("top")["k"].default == inspect.signature(Index.top).parameters["k"].default
    assert params("top")["k"].help == K.help and params("top")["index_dir"].help == INDEX.help
    assert params("layers")["rf_gates"].help == params("index")["rf_gates"].help == RF_GATES.help
    assert params("layers")["trust_code"].help == params("index")["trust_code"].help


def test_the_python_api_takes_the_same_options():
    """actindex.index takes the index command's options, Index.grid the grid command's (GridOptions), and
    Index.report the report command's (ReportConfig): each builds the config the command builds."""
    assert GridOptions(mask=None) == GridOptions()  # Index.grid(mask=None), as before: no mask
    assert ReportConfig("idx/", "site/", layers="a, b", units="0-2,7").layers == ("a", "b")
    assert ReportConfig("idx/", "site/", units="0-2,7").units == (0, 1, 2, 7)
    assert ReportConfig("idx/", "site/", units=5).units == (5,)


# ------------------------------------------------------------------ a config of our own, through Typer


@dataclass
class Toy:
    source: str = Option("Where.", positional=True).field()
    k: int = K.field(9)
    threshold: float = THRESHOLD.field(0.5)
    layers: tuple[str, ...] = LAYERS.field(("a", "b"))
    preprocessing: Preprocessing | dict | None = Option("", group=Preprocessing).field(None)
    names: tuple[str, ...] = Option("Names.", flags=("--names",)).field(())

    def __post_init__(self) -> None:
        check(self)
        self.names = tuple(self.names)


toy = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@toy.command()
@with_config
def show(first: Annotated[str, typer.Argument()], config: Toy, loud: Annotated[bool, typer.Option()] = False):
    """Print the config."""
    typer.echo(f"{first} {config!r} loud={loud}")


def run(*args: str):
    return CliRunner().invoke(toy, list(args))


def test_a_generated_command_builds_the_config_from_its_options():
    result = run("one", "two")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "one Toy(source='two', k=9, threshold=0.5, layers=('a', 'b'), preprocessing=None, names=()) "
        "loud=False"
    )
    result = run(
        "one", "two", "-k", "3", "--layers", "c, d", "--mean", "0,0,1", "--interpolation", "nearest",
        "--names", "x", "--names", "y", "--loud",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "k=3, threshold=0.5, layers=('c', 'd')" in result.output
    assert "preprocessing={'interpolation': 'nearest', 'mean': (0.0, 0.0, 1.0)}" in result.output
    assert "names=('x', 'y')) loud=True" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mask-threshold", "0"), "Error: --mask-threshold 0.0: give a fraction in (0, 1]"),
        (("--mean", "1,2"), "Error: --mean needs three numbers"),
        (("--mask-threshold", "1.5"), "Error: --mask-threshold 1.5: give a fraction in (0, 1]"),
    ],
)
def test_a_configs_check_is_one_line_and_exit_code_2(args, message):
    result = run("one", "two", *args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(message), result.output


def test_closed_bounds_are_typers_too_and_open_ones_the_checks():
    result = run("one", "two", "--k", "0")
    assert result.exit_code == 2 and "--k" in result.output  # refused by Typer, as --help's [x>=1] says
    params = {p.name: p for p in typer.main.get_command(toy).params}
    assert (params["k"].min, params["k"].max) == (1, None)
    assert (params["threshold"].min, params["threshold"].max) == (None, None)  # (0, 1]: one line, above


def test_the_generated_signature_is_what_typer_reads():
    names = list(inspect.signature(show).parameters)
    assert names == ["first", *(p.name for p in parameters(Toy)), "loud"]
    assert "resize" in names and "preprocessing" not in names
    hints = typing.get_type_hints(show, include_extras=True)
    assert typing.get_args(hints["layers"])[0] is str  # text on the command line, parsed by the config
    assert typing.get_args(hints["names"])[0] == list[str]  # a repeated option
    assert show.__doc__ == "Print the config." and show.__name__ == "show"
