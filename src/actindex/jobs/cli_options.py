"""Typer parameters made from options (pipeline.options), so that a command restates none of its config's.

    @app.command()
    @with_config
    def report(config: ReportConfig, progress: Annotated[bool, typer.Option(help="...")] = True) -> None:
        ...   # `actindex report IDX --out site/ --k 9 ...`: ReportConfig's options, then --progress

    KOpt = annotated(K, int)            # one option alone, for a command without a config (`actindex top`)

Each option field becomes a parameter with the field's default, the option's flags and help, and its closed
bounds (Typer shows `[x>=1]` and refuses what is outside; an open bound, as the mask threshold's (0, 1], is
left to the config's check, whose one line `actindex report` has always printed). On the command line an
option with a parser takes text (a tuple default is offered as its comma-separated text), one with choices
its Enum, a tuple field a repeated option; the options of a group (IndexRequest.preprocessing) default to
None, "keep the default".
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from actindex.pipeline.errors import UserError
from actindex.pipeline.options import Option, flat_options, gather, options

REQUIRED = inspect.Parameter.empty


def fail(exc: BaseException, code: int = 2) -> typer.Exit:
    """One line on stderr, exit code 2, no traceback: for errors the user can fix (UserError). Anything
    else is a bug and keeps its traceback. (Exit 1 where the index cannot answer yet.)"""
    typer.echo(f"Error: {' '.join(str(exc).split())}", err=True)
    return typer.Exit(code=code)


def annotated(option: Option, kind: Any) -> Any:
    """`Annotated[kind, typer.Option(...)]` (typer.Argument for a positional option) for `option`."""
    if option.positional:
        return Annotated[kind, typer.Argument(help=option.help)]
    bounds = {} if option.min_open else {"min": option.min, "max": option.max}
    return Annotated[kind, typer.Option(*option.flags, help=option.help, **bounds)]


def parameters(cls: type) -> list[inspect.Parameter]:
    """The Typer parameters of dataclass `cls`'s options, in field order (pipeline.options.flat_options)."""
    hints = {cls: typing.get_type_hints(cls)}
    hints.update({o.group: typing.get_type_hints(o.group) for o in options(cls).values() if o.group})
    params = []
    for name, (field, key, option) in flat_options(cls).items():
        hint = hints[cls][field] if key is None else hints[options(cls)[field].group][key]
        default = _default(cls, field) if key is None else None
        if option.parse is not None and isinstance(default, tuple):
            default = ",".join(str(getattr(part, "value", part)) for part in default)
        kind = inspect.Parameter.KEYWORD_ONLY
        params.append(
            inspect.Parameter(name, kind, default=default, annotation=_annotation(option, hint, default))
        )
    return params


def _default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    return REQUIRED if field.default_factory is dataclasses.MISSING else field.default_factory()


def _annotation(option: Option, hint: Any, default: Any) -> Any:
    """What the command line takes for a field of type `hint`: text to parse, an Enum, a list, or the type."""
    if option.parse is not None:
        kind = str
    elif option.choices is not None:
        kind = option.choices
    elif typing.get_origin(hint) is tuple:
        kind = list[typing.get_args(hint)[0]]
    else:
        kind = hint
    return annotated(option, kind | None if default is None else kind)


def with_config(command: Callable) -> Callable:
    """`command` with its parameter typed as a config dataclass replaced by that dataclass's options (Typer
    parameters, in its place); Typer calls the result with their values, and `command` gets the config
    built from them (pipeline.options.gather). A UserError while building it is one line, exit code 2.
    Typer reads a command's parameters from its signature and type hints: both are set here."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = list(inspect.signature(command).parameters.values())
    at = next(i for i, p in enumerate(own) if dataclasses.is_dataclass(hints[p.name]))
    name, cls = own[at].name, hints[own[at].name]
    generated = parameters(cls)
    mine = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]) for p in own]
    signature = [*mine[:at], *generated, *mine[at + 1 :]]

    @functools.wraps(command)
    def run(**values: Any) -> Any:
        given = {p.name: values.pop(p.name) for p in generated}
        try:
            config = cls(**gather(cls, given))
        except UserError as exc:
            raise fail(exc) from None
        return command(**values, **{name: config})

    run.__signature__ = inspect.Signature(signature, return_annotation=None)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in signature} | {"return": None}
    return run
