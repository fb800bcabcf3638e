"""The analysis catalog: named, documented SQL (queries/catalog/*.sql) that `connect` defines as DuckDB table
macros on every connection, for `actindex sql` and for Python.

    con = connect("idx/")
    label_selectivity(con, "layer4", k=20)          # Arrow table: per unit, labels of its top-k, purest first
    image_units(con, "layer4", "cats/cat_001.jpg")  # the units that image excites most, against their p99
    unit_stats(con, "layer4")                       # quantiles, dead units, top-k of one image family
    compare_topk("idx/", "idx_b/", "layer4", k=9)   # how each unit's top-k moved between two indexes

    actindex sql idx/ "SELECT * FROM unit_stats('layer4') WHERE dead"
    actindex sql idx/ --compare idx_b/ "SELECT * FROM topk_drift('layer4', k := 9)"

A catalog file opens with a one-line description (what `actindex sql --help` lists), then its parameters
and columns, in `--` comments, then `CREATE OR REPLACE MACRO name(params) AS TABLE ...`. Files whose name
starts with "_" hold the scalar macros the others share (checks that stop a query with a message that says
what to do); they are defined first. The functions below call the macros with bound parameters.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from actindex.pipeline.errors import InvalidInputError
from actindex.queries.sql import arrow_table

if TYPE_CHECKING:  # duckdb and pyarrow are imported by the functions that run SQL (the CLI's --help does not)
    from importlib.resources.abc import Traversable

    import duckdb
    import pyarrow as pa

_CREATE = re.compile(r"^CREATE OR REPLACE MACRO (\w+)\((.*?)\) AS TABLE", re.M)


@dataclass(frozen=True)
class Macro:
    """One catalog file."""

    name: str  # the macro's name: SELECT * FROM name(...)
    params: tuple[str, ...]  # its parameters, in order
    defaults: dict[str, str]  # parameter -> default (SQL text) for those that have one
    summary: str  # the file's first comment line
    sql: str  # the file's text

    @property
    def signature(self) -> str:
        """'label_selectivity(layer, k := NULL)', as SQL calls it."""
        args = (f"{p} := {self.defaults[p]}" if p in self.defaults else p for p in self.params)
        return f"{self.name}({', '.join(args)})"


@functools.cache
def macros() -> tuple[Macro, ...]:
    """The catalog's table macros, by name."""
    found = []
    for path in sorted(_files(), key=lambda p: p.name):
        if path.name.startswith("_"):
            continue
        text = path.read_text()
        match = _CREATE.search(text)
        if match is None:
            raise ValueError(f"queries/catalog/{path.name} defines no CREATE OR REPLACE MACRO ... AS TABLE")
        params, defaults = _params(match.group(2))
        summary = text.splitlines()[0].removeprefix("--").strip()
        found.append(Macro(match.group(1), params, defaults, summary, text))
    return tuple(found)


def _files() -> list[Traversable]:
    folder = resources.files(__package__).joinpath("catalog")
    return [entry for entry in folder.iterdir() if entry.name.endswith(".sql")]


def _params(text: str) -> tuple[tuple[str, ...], dict[str, str]]:
    names, defaults = [], {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, default = (s.strip() for s in part.partition(":="))
        names.append(name)
        if default:
            defaults[name] = default
    return tuple(names), defaults


def define_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create every catalog macro on `con`, whose views (queries.db.connect) they read."""
    for path in sorted(_files(), key=lambda p: (not p.name.startswith("_"), p.name)):
        con.execute(path.read_text())


def help_text() -> str:
    """One line per macro: its signature and summary (`actindex sql --help`)."""
    return "\n".join(f"{m.signature}: {m.summary}" for m in macros())


def label_selectivity(con: duckdb.DuckDBPyConnection, layer: str, k: int | None = None) -> pa.Table:
    """Per unit of `layer`: the share of each label among its top-k images, the dominant label and its share
    (purity); k=None uses every image the topk table keeps. queries/catalog/label_selectivity.sql."""
    return _call(con, "label_selectivity", layer=layer, k=k)


def label_notes(con: duckdb.DuckDBPyConnection) -> list[str]:
    """What a reader of label_selectivity should know: an index whose images have no label has no purity."""
    labelled = con.sql("SELECT count(*) FROM images WHERE label IS NOT NULL").fetchall()[0][0]
    if labelled:
        return []
    return [
        "no image of this index has a label, so purity is NULL for every unit: labels come from class "
        "subfolders, a list file's second column or --label-column"
    ]


def image_units(con: duckdb.DuckDBPyConnection, layer: str, image: str | int, n: int = 10) -> pa.Table:
    """The `n` units of `layer` that `image` (relpath, uri or image_id) excites most relative to each unit's
    own distribution (act / the unit's p99 over the index). Needs activations (a dense index).
    queries/catalog/image_units.sql."""
    return _call(con, "image_units", layer=layer, image=str(image), n=n)


def unit_stats(
    con: duckdb.DuckDBPyConnection, layer: str, k: int | None = None, family: str = "stem"
) -> pa.Table:
    """Per unit of `layer`: p50/p90/p99/max of its per-image maxima, whether it is dead, and whether its
    top-k images are one family ('stem', 'folder' or 'label'). Needs activations (a dense index).
    queries/catalog/unit_stats.sql."""
    return _call(con, "unit_stats", layer=layer, k=k, family=family)


def topk_drift(con: duckdb.DuckDBPyConnection, layer: str, k: int | None = None) -> pa.Table:
    """Per unit of `layer`: the overlap of its top-k images here and in the index connected as `compare`
    (queries.db.connect(IDX, compare=OTHER)), most changed first. queries/catalog/topk_drift.sql."""
    return _call(con, "topk_drift", layer=layer, k=k)


def _call(con: duckdb.DuckDBPyConnection, name: str, **params) -> pa.Table:
    """SELECT * FROM name($a, b := $b, ...): the macro with every parameter bound; a check that stops the
    query (a layer or image not in the index, a k beyond the index's) is an InvalidInputError."""
    import duckdb

    macro = next(m for m in macros() if m.name == name)
    args = ", ".join(f"{p} := ${p}" if p in macro.defaults else f"${p}" for p in macro.params)
    try:
        return arrow_table(con.sql(f"SELECT * FROM {name}({args})", params=params))
    except duckdb.InvalidInputException as exc:
        raise stopped(exc) from None


def built_from(
    con: duckdb.DuckDBPyConnection, layer: str, unit: int, src_layer: str | None = None
) -> pa.Table:
    """The units of lower layers that build `unit` of `layer` (the contributions table), strongest first.
    queries/catalog/built_from.sql."""
    return _call(con, "built_from", layer=layer, unit=unit, src_layer=src_layer)


def feeds(con: duckdb.DuckDBPyConnection, src_layer: str, src_unit: int, n: int = 10) -> pa.Table:
    """The units of higher layers that `src_unit` of `src_layer` feeds most. queries/catalog/feeds.sql."""
    return _call(con, "feeds", src_layer=src_layer, src_unit=src_unit, n=n)


def stopped(exc: Exception) -> InvalidInputError:
    """A query stopped by error(), as the catalog's checks do, as a one-line InvalidInputError."""
    return InvalidInputError(str(exc).removeprefix("Invalid Input Error: "))
