"""Each option stated once: a config dataclass's field carries its flag, help, choices, bounds and parser,
and the command line, the Python API and the config's own checks are derived from it.

    K = Option("How many top images per unit.", flags=("--k", "-k"), min=1, unit="image per unit")

    @dataclass
    class Sheet:
        layers: tuple[str, ...] = Option("Layer names or globs, e.g. 'layer4,fc'.", parse=comma_list).field()
        k: int = K.field(9)

        def __post_init__(self) -> None:
            check(self)          # layers="a, b" -> ("a", "b"); k=0: "--k 0: give at least 1 image per unit"

    options(Sheet)               # {"layers": Option(...), "k": K}

jobs/cli_options.py turns a config's options into Typer parameters, so `actindex grid --k` is GridOptions.k;
Typer is not imported here (pipeline/ runs on GPU machines with torch alone). A field whose Option has a
`group` is offered as the options of that dataclass instead (IndexRequest.preprocessing: --resize, --crop,
..., IndexRequest.columns: --image-column, ...): `flat_options` names them, `gather` hands the config a dict
of those given, and `check` checks that dict's values with their own options.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from actindex.pipeline.errors import InvalidInputError

METADATA_KEY = "actindex.option"


@dataclass(frozen=True)
class Option:
    """How a command line spells one option, what it says about it, and which values it takes."""

    help: str
    flags: tuple[str, ...] = ()  # the command line's spellings ("--out", "-o"); () = --field-name
    positional: bool = False  # a command-line argument rather than an --option
    choices: type[Enum] | None = None  # a str Enum: values become its members, --help lists them
    min: float | None = None  # bounds: min, or min and max (checked by `check`, and by Typer where closed)
    max: float | None = None
    min_open: bool = False  # min itself is refused: (min, max]
    unit: str = ""  # what the bounds count, in errors: "give at least 1 image per unit"
    parse: Callable[[Any], Any] | None = None  # a value as given (text on the command line) -> the field's
    group: type | None = None  # a dataclass whose own options are offered in this field's place
    group_names: str = "{}"  # their names: "{}_column" offers Columns.label as --label-column

    def field(
        self, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **changes
    ):
        """A dataclass field carrying this option; `changes` restate part of it for this field (its help)."""
        option = dataclasses.replace(self, **changes) if changes else self
        return dataclasses.field(
            default=default, default_factory=default_factory, metadata={METADATA_KEY: option}
        )

    def flag(self, name: str) -> str:
        """How errors name the option of field `name`: its first flag, else --name-with-dashes."""
        return self.flags[0].split("/")[0] if self.flags else "--" + name.replace("_", "-")

    def value(self, value: Any, name: str) -> Any:
        """`value` parsed, made one of the choices and checked against the bounds (None stays None); a bad one
        raises InvalidInputError in one line naming the flag."""
        if value is None:
            return None
        flag = self.flag(name)
        if self.parse is not None:
            try:
                value = self.parse(value)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{flag} {exc}") from None
        if self.choices is not None:
            value = self._choice(value, flag)
        if self._outside(value):
            raise InvalidInputError(f"{flag} {value}: give {self._range()}")
        return value

    def _choice(self, value: Any, flag: str) -> Enum:
        try:
            return self.choices(value)  # type: ignore[misc]
        except ValueError:
            names = ", ".join(item.value for item in self.choices)  # type: ignore[union-attr]
            raise InvalidInputError(
                f"{flag} {getattr(value, 'value', value)!r} is not one of {names}"
            ) from None

    def _outside(self, value: Any) -> bool:
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            return True
        return self.max is not None and value > self.max

    def _range(self) -> str:
        if self.max is None:
            return f"{'more than' if self.min_open else 'at least'} {self.min:g}" + f" {self.unit}" * bool(
                self.unit
            )
        return f"{self.unit or 'a number'} in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}]"


@functools.cache
def options(cls: type) -> dict[str, Option]:
    """{field name: Option} of dataclass `cls`'s fields that are options, in field order."""
    return {f.name: f.metadata[METADATA_KEY] for f in dataclasses.fields(cls) if METADATA_KEY in f.metadata}


@functools.cache
def flat_options(cls: type) -> dict[str, tuple[str, str | None, Option]]:
    """{name: (field, key in the group or None, Option)}: the options of `cls` as a command line offers them,
    each group replaced by its dataclass's options, named by its group_names."""
    flat: dict[str, tuple[str, str | None, Option]] = {}
    for name, option in options(cls).items():
        if option.group is None:
            flat[name] = (name, None, option)
        else:
            for key, inner in options(option.group).items():
                flat[option.group_names.format(key)] = (name, key, inner)
    return flat


def gather(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `cls` from `values` named as flat_options names them (whole fields too): the
    options of a group given (not None) become a dict for its field, which is left out when none is given."""
    flat = flat_options(cls)
    kwargs: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        field, key, _ = flat.get(name, (name, None, None))
        if key is None:
            kwargs[name] = value
        elif value is not None:
            groups.setdefault(field, {})[name] = value
    for field, given in groups.items():
        if kwargs.get(field) is not None:
            raise InvalidInputError(f"give {field} or {', '.join(given)}, not both")
        kwargs[field] = {flat[name][1]: value for name, value in given.items()}
    return kwargs


def check(config: Any) -> None:
    """Every option field of `config` (a dataclass, frozen or not) through Option.value, in place; a group
    field holding a dict has each of its values checked by the group's own option, enums as their text."""
    for name, option in options(type(config)).items():
        value = getattr(config, name)
        if option.group is None:
            value = option.value(value, name)
        elif isinstance(value, dict):
            value = _group_values(name, option, value)
        object.__setattr__(config, name, value)


def _group_values(name: str, option: Option, given: dict[str, Any]) -> dict[str, Any]:
    inner = options(option.group)  # type: ignore[arg-type]
    unknown = sorted(set(given) - set(inner))
    if unknown:
        raise InvalidInputError(f"unknown {name} values {unknown}; known: {', '.join(inner)}")
    values = {key: inner[key].value(value, option.group_names.format(key)) for key, value in given.items()}
    return {key: getattr(value, "value", value) for key, value in values.items()}


# ------------------------------------------------------------------------------------------- parsers


def comma_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """'layer4, fc' (or a sequence of names) -> ("layer4", "fc"): parts stripped, empty ones dropped."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(part.strip() for part in parts if part.strip())


def three_floats(value: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.485,0.456,0.406' (or three numbers) -> (0.485, 0.456, 0.406): a per-channel mean or std."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(float(part) for part in parts)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3:
        raise InvalidInputError(
            f"needs three numbers, one per channel as mean and std have, e.g. 0.5,0.5,0.5 (got {value!r})"
        )
    return numbers  # type: ignore[return-value]
