"""DuckDB over an index directory: views `images`, `layers`, `activations`, `topk`, `units`, named queries
and the analysis catalog's table macros (queries/catalog.py).

    con = connect("idx/")
    con.sql("SELECT layer, count(*) FROM activations GROUP BY 1").show()
    rows = run_sql_file(con, "top_images", layer="layer4", units=[17], k=9)
    con.sql("SELECT * FROM label_selectivity('layer4', k := 20)").show()
    con = connect("idx/", compare="idx_b/")     # the second index's views are other.topk, other.images, ...
    con.sql("SELECT * FROM topk_drift('layer4', k := 9)").show()

Views list only the files of completed shards (from their markers), so a query never sees half a shard.
An index built with `--store topk` has no activations: querying that view fails with one line saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from actindex.pipeline import schema
from actindex.pipeline.errors import InvalidInputError, MissingInputError, UnknownNameError, UserError
from actindex.pipeline.geometry import LayerInfo, ReceptiveField, boxes, from_layers_row
from actindex.pipeline.layout import IndexLayout, locked_by, topk_is_current
from actindex.pipeline.model_args import random_weights
from actindex.pipeline.options import Option
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.storage import user_errors
from actindex.queries.catalog import define_macros, topk_drift
from actindex.queries.sql import arrow_table, run_sql_file, sql_text

if TYPE_CHECKING:
    import duckdb


class NotAnIndexError(MissingInputError):
    """The directory has no run.json: it is not an actindex index."""


class IncompleteIndexError(UserError):
    """Nothing can be shown yet: a top-k-only index whose topk table is not built (its run did not end)."""


NO_ACTIVATIONS = (
    "this index was built with --store topk: it has no activations table (topk, images and layers are "
    "here); rebuild it with --store dense to query every image"
)


# the index every reading command takes first (`actindex top IDX`, ReportConfig.index)
INDEX = Option(
    "Index written by `actindex index`: a directory, or a URL (s3://bucket/prefix/).", positional=True
)

OTHER = "other"  # the schema of the second index's views (connect's `compare`)
NO_SECOND_INDEX = (
    "no second index to compare with: the other.* views (and topk_drift) need one; give it with "
    "actindex sql IDX --compare OTHER_IDX, or in Python connect(IDX, compare=OTHER_IDX)"
)


def connect(
    index_dir: str | Path, compare: str | Path | None = None, catalog: bool = True
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the index's views and the catalog's macros; `index_dir` is a directory or an
    object-store URL (s3://bkt/idx/, read through fsspec: DuckDB needs no extension). With `compare`, a
    second index's views are in the schema `other` (other.topk, other.images, ...), for topk_drift.
    `catalog=False` leaves the macros out: defining them reads each view's first file footer again, about
    a second on an object store, which `top` and `grid` do not need."""
    import duckdb

    con = duckdb.connect()
    _attach(con, index_dir, "main")
    con.execute(f"CREATE SCHEMA {OTHER}")
    if compare is None:
        for name in schema.TABLES:
            _failing_view(con, name, NO_SECOND_INDEX, OTHER)
    else:
        _attach(con, compare, OTHER)
    if catalog:
        define_macros(con)  # after the views: DuckDB binds a macro's tables when it is created
    return con


def _attach(con: duckdb.DuckDBPyConnection, index_dir: str | Path, where: str) -> None:
    """The views of the index at `index_dir` in the schema `where`."""
    layout = IndexLayout(index_dir)
    with user_errors(layout.url):
        manifest = layout.read_manifest()
        if manifest is None:
            raise _not_an_index(index_dir)
        markers = layout.completed_shards()
        # a topk without its record is being written, or was left half-written by a killed run: not shown
        topk = layout.topk_files() if layout.exists(layout.topk_covers) else []
        has_layers = layout.exists(layout.layers)
        has_units = layout.exists(layout.units)  # not in an index written before unit names
        contributions = layout.contributions_markers()
    if layout.remote and _protocol(layout.fs) not in con.list_filesystems():
        con.register_filesystem(layout.fs)
    files = [f for marker in markers.values() for f in marker["files"]]
    _view(con, "images", [layout.location(layout.root / f) for f in files if f.startswith("images/")], where)
    if manifest.get("params", {}).get("store") == "topk":
        _failing_view(con, "activations", NO_ACTIVATIONS, where)
    else:
        activations = [layout.location(layout.root / f) for f in files if f.startswith("activations/")]
        _view(con, "activations", activations, where)
    _view(con, "layers", [layout.location(layout.layers)] if has_layers else [], where)
    groups = [f for marker in contributions for f in marker["files"]]  # actindex contributions
    _view(con, "contributions", [layout.location(layout.root / f) for f in groups], where)
    _view(con, "topk", [layout.location(path) for path in topk], where)
    names = _select("units", [layout.location(layout.units)] if has_units else [])
    # every unit of every layer, named from units.parquet; a view cannot take parameters: the file is a CTE
    con.execute(f"CREATE VIEW {where}.units AS WITH unit_names AS ({names}) {sql_text('units')}")


def _protocol(fs) -> str:
    """The name DuckDB registers an fsspec filesystem under."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def index_preprocessing(index_dir: str | Path) -> Preprocessing:
    """The preprocessing an index was built with (run.json's params): how its boxes map to the originals,
    and how to open an original so that its pixels are the ones the boxes refer to (`decode`)."""
    return Preprocessing.from_dict(index_params(index_dir)["preprocessing"])


def index_params(index_dir: str | Path) -> dict:
    """run.json's params: what the index was computed with (jobs.spec.RunSpec.params)."""
    layout = IndexLayout(index_dir)
    with user_errors(layout.url):
        manifest = layout.read_manifest()
    if manifest is None:
        raise _not_an_index(index_dir)
    return manifest["params"]


def layer_geometry(con: duckdb.DuckDBPyConnection, layer: str) -> tuple[LayerInfo, ReceptiveField]:
    """The layers table's record of `layer`: output shape and receptive field (as the boxes use it)."""
    layer_channels(con, layer)  # names the indexed layers when `layer` is not one
    info = arrow_table(con.sql("SELECT * FROM layers WHERE layer = $layer", params={"layer": layer}))
    return from_layers_row(info.to_pylist()[0])


def _not_an_index(index_dir: str | Path) -> NotAnIndexError:
    """The hint never writes an index into the folder named (it may be the images themselves)."""
    folder = str(index_dir).rstrip("/") or "."
    return NotAnIndexError(
        f"{index_dir} is not an actindex index (no run.json); if it holds images, index them into a new "
        f"folder: actindex index {folder} --out {folder}-index --weights DEFAULT --layers ..."
    )


def _view(con: duckdb.DuckDBPyConnection, name: str, files: list[str], where: str = "main") -> None:
    con.execute(f"CREATE VIEW {where}.{name} AS {_select(name, files, con)}")


def _select(name: str, files: list[str], con: duckdb.DuckDBPyConnection | None = None) -> str:
    """A SELECT of table `name`'s columns from its Parquet `files` (no files: no rows, the same columns)."""
    if not files:
        return f"SELECT {_typed_nulls(name)} WHERE false"
    listed = "[" + ", ".join(_literal(f) for f in files) + "]"
    options = ""
    if name in schema.PARTITIONED:  # `layer` is the directory's name, always text (never a number)
        options = ", hive_partitioning = true, hive_types = {'layer': VARCHAR}"
    # qualified: a view read inside a macro whose parameter has a column's name (layer) still means the column
    source = f"read_parquet({listed}{options})"
    columns = ", ".join(f"t.{column}" for column in schema.TABLES[name].names)
    if con is not None and name in schema.ADDED_COLUMNS:  # an older index's files may lack some columns
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        added = {
            column: value for column, value in schema.ADDED_COLUMNS[name].items() if column not in present
        }
        columns = ", ".join(
            f"{str(added[column]).lower()} AS {column}" if column in added else f"t.{column}"
            for column in schema.TABLES[name].names
        )
    return f"SELECT {columns} FROM {source} AS t"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _failing_view(con: duckdb.DuckDBPyConnection, name: str, message: str, where: str = "main") -> None:
    """A view with the table's columns that raises `message` when it is read."""
    failing = f"SELECT {_typed_nulls(name)} FROM range(1) WHERE error({_literal(message)})"
    con.execute(f"CREATE VIEW {where}.{name} AS {failing}")  # views cannot take bound parameters


def _typed_nulls(name: str) -> str:
    """'CAST(NULL AS BIGINT) AS image_id, ...': table `name`'s columns with their types and no value."""
    return ", ".join(
        f"CAST(NULL AS {_SQL_TYPES[str(field.type)]}) AS {field.name}" for field in schema.TABLES[name]
    )


_SQL_TYPES = {
    "int64": "BIGINT",
    "int32": "INTEGER",
    "int16": "SMALLINT",
    "float": "FLOAT",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "list<item: float>": "FLOAT[]",
}


def layer_channels(con: duckdb.DuckDBPyConnection, layer: str) -> int:
    """Units in `layer`; a missing layer raises LookupError naming the indexed ones."""
    info = run_sql_file(con, "layer_info", layer=layer)
    if info.num_rows == 0:
        names = run_sql_file(con, "layer_names").column("layer").to_pylist()
        raise UnknownNameError(f"layer {layer!r} is not in this index; indexed layers: {', '.join(names)}")
    return int(info.column("channels")[0].as_py())


def top_images(con: duckdb.DuckDBPyConnection, layer: str, units: list[int], k: int) -> pa.Table:
    """Top-k rows of the topk table (joined with images) for `units` of `layer`; units are checked
    against the layer. `unit_tops` also answers beyond the table's k and while it is being rebuilt."""
    check_units(con, layer, units)
    return run_sql_file(con, "top_images", layer=layer, units=units, k=k)


@dataclass
class UnitTops:
    """The top rows of some units, as `actindex top` and `grid` show them."""

    rows: pa.Table  # the columns of queries/top_images.sql, units in the order asked for
    source: str  # "topk" or "activations"
    notes: list[str] = field(default_factory=list)  # what the reader should know about the answer
    random_weights: bool = False  # the index's network had random weights (--weights random): say so


def unit_tops(index_dir: str | Path, layer: str, units: list[int], k: int) -> UnitTops:
    """Each unit's top-k images with their boxes. From the topk table while it is current and holds k;
    otherwise from activations, exactly (boxes computed the way the workers compute them); a top-k-only
    index that cannot answer says why."""
    layout = IndexLayout(index_dir)
    con = connect(index_dir, catalog=False)
    check_units(con, layer, units)
    manifest = layout.read_manifest()
    kept, dense = manifest["params"]["k"], manifest["params"].get("store", "dense") == "dense"
    markers = layout.completed_shards()
    notes = []
    current = topk_is_current(layout, markers)
    if not current:
        why = (
            "a job is writing this index now; topk is rebuilt when it ends"
            if _locked(layout)
            else "the last run did not finish; rerun the same `actindex index` command to resume it and "
            "rebuild topk"
        )
        if not dense:
            raise IncompleteIndexError(f"{index_dir} has no topk table yet: {why}")
        notes.append(f"{why}; answered from the activations of the {len(markers)} shards done")
    elif k > kept and not dense:
        raise InvalidInputError(
            f"this index kept the top {kept} images per unit and no activations (--store topk); "
            f"ask for --k {kept} or less, or index again with --k {k}"
        )
    elif k > kept:
        notes.append(f"k={k} is more than the {kept} the topk table keeps: answered from activations (exact)")
    if current and k <= kept:
        rows, source = run_sql_file(con, "top_images", layer=layer, units=units, k=k), "topk"
    else:
        rows = run_sql_file(con, "top_from_activations", layer=layer, units=units, k=k)
        rows, source = _with_boxes(con, layer, rows, index_preprocessing(index_dir)), "activations"
    rows = _in_order(rows, units)
    notes += tie_notes(rows, k)
    return UnitTops(rows, source, notes, random_weights(manifest["params"]))


def check_units(con: duckdb.DuckDBPyConnection, layer: str, units: list[int]) -> None:
    channels = layer_channels(con, layer)
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise UnknownNameError(f"unit {bad[0]} is out of range: layer {layer!r} has units 0-{channels - 1}")


def _locked(layout: IndexLayout) -> bool:
    return locked_by(layout) is not None


def _with_boxes(con: duckdb.DuckDBPyConnection, layer: str, rows: pa.Table, prep: Preprocessing) -> pa.Table:
    """Add x0, y0, x1, y1: the peaks' receptive-field boxes in original pixels, as the workers map them."""
    _, rf = layer_geometry(con, layer)
    column = lambda name: rows.column(name).to_numpy()  # noqa: E731
    model_boxes = boxes(rf, column("y"), column("x"))
    original = prep.to_original(model_boxes, column("width"), column("height"))
    for j, name in enumerate(("x0", "y0", "x1", "y1")):
        rows = rows.append_column(name, pa.array(original[:, j], pa.int32()))
    return rows.select(_TOP_COLUMNS)


_TOP_COLUMNS = [
    "layer", "unit", "name", "rank", "act", "image_id", "label", "uri", "relpath", "width", "height",
    "y", "x", "x0", "y0", "x1", "y1", "ties",
]  # fmt: skip


def _in_order(rows: pa.Table, units: list[int]) -> pa.Table:
    """The rows with units in the order asked for (each unit's rows stay best first)."""
    place = {unit: i for i, unit in enumerate(dict.fromkeys(units))}
    order = np.lexsort((rows.column("rank").to_numpy(), [place[u] for u in rows.column("unit").to_pylist()]))
    return rows.take(pa.array(order, pa.int64())) if rows.num_rows else rows


def tie_notes(rows: pa.Table, k: int) -> list[str]:
    """One line per unit whose k-th act is shared with images the list leaves out."""
    by_unit: dict[int, list[dict]] = {}
    for row in rows.to_pylist():
        by_unit.setdefault(row["unit"], []).append(row)
    notes = []
    for unit, listed in by_unit.items():
        last = listed[-1]
        same = sum(1 for row in listed if _same_act(row["act"], last["act"]))
        if last["rank"] == k and last["ties"] > same:
            notes.append(
                f"unit {unit}: {last['ties']:,} images share the k-th act {last['act']:.6g}; the {same} "
                "listed are picked among them by smaller image_id"
            )
    return notes


def _same_act(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN equals NaN here, as in the index's order


def compare_topk(index_dir: str | Path, other_dir: str | Path, layer: str, k: int | None = None) -> pa.Table:
    """topk_drift between two indexes of the same images (a checkpoint and the next, two seeds, ...)."""
    return topk_drift(connect(index_dir, compare=other_dir), layer, k)
