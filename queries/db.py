"""DuckDB over an index directory: views `images`, `layers`, `activations`, `topk`, and named queries.

    con = connect("idx/")
    con.sql("SELECT layer, count(*) FROM activations GROUP BY 1").show()
    rows = run_sql_file(con, "top_images", layer="layer4", units=[17], k=9)

Views list only the files of completed shards (from their markers), so a query never sees half a shard.
An index built with `--store topk` has no activations: querying that view fails with one line saying so.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline import schema
from pipeline.errors import MissingInputError, UnknownNameError
from pipeline.preprocess import Preprocessing
from pipeline.writer import IndexLayout


class NotAnIndexError(MissingInputError):
    """The directory has no run.json: it is not an actindex index."""


NO_ACTIVATIONS = (
    "this index was built with --store topk: it has no activations table (topk, images and layers are "
    "here); rebuild it with --store dense to query every image"
)


def connect(index_dir: str | Path) -> duckdb.DuckDBPyConnection:
    layout = IndexLayout(index_dir)
    if not layout.manifest.is_file():
        raise _not_an_index(index_dir)
    con = duckdb.connect()
    files = [layout.root / f for marker in layout.completed_shards().values() for f in marker["files"]]
    _view(con, "images", [f for f in files if f.parts[len(layout.root.parts)] == "images"])
    if layout.read_manifest().get("params", {}).get("store") == "topk":
        _failing_view(con, "activations", NO_ACTIVATIONS)
    else:
        _view(con, "activations", [f for f in files if f.parts[len(layout.root.parts)] == "activations"])
    _view(con, "layers", [layout.layers] if layout.layers.is_file() else [])
    _view(con, "topk", sorted((layout.root / "topk").glob("*.parquet")))
    return con


def index_preprocessing(index_dir: str | Path) -> Preprocessing:
    """The preprocessing an index was built with (run.json's params): how its boxes map to the originals,
    and how to open an original so that its pixels are the ones the boxes refer to (`decode`)."""
    manifest = IndexLayout(index_dir).read_manifest()
    if manifest is None:
        raise _not_an_index(index_dir)
    return Preprocessing.from_dict(manifest["params"]["preprocessing"])


def _not_an_index(index_dir: str | Path) -> NotAnIndexError:
    return NotAnIndexError(
        f"{index_dir} is not an actindex index (no run.json); "
        f"build one with: actindex index IMAGES --out {index_dir}"
    )


def _view(con: duckdb.DuckDBPyConnection, name: str, files: list[Path]) -> None:
    if files:
        con.read_parquet([str(f) for f in files]).create_view(name)
    else:
        con.register(name, schema.TABLES[name].empty_table())


def _failing_view(con: duckdb.DuckDBPyConnection, name: str, message: str) -> None:
    """A view with the table's columns that raises `message` when it is read."""
    columns = ", ".join(
        f"CAST(NULL AS {_SQL_TYPES[str(field.type)]}) AS {field.name}" for field in schema.TABLES[name]
    )
    literal = "'" + message.replace("'", "''") + "'"  # views cannot take bound parameters
    con.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM range(1) WHERE error({literal})")


_SQL_TYPES = {
    "int64": "BIGINT",
    "int32": "INTEGER",
    "int16": "SMALLINT",
    "float": "FLOAT",
    "string": "VARCHAR",
}


def sql_text(name: str) -> str:
    return resources.files("queries").joinpath(f"{name}.sql").read_text()


def run_sql_file(con: duckdb.DuckDBPyConnection, name: str, **params) -> pa.Table:
    """Run queries/<name>.sql with bound parameters; returns an Arrow table."""
    return arrow_table(con.sql(sql_text(name), params=params))


def arrow_table(result) -> pa.Table:
    """The result as an Arrow table (DuckDB 2 renamed fetch_arrow_table to to_arrow_table)."""
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    return fetch()


def layer_channels(con: duckdb.DuckDBPyConnection, layer: str) -> int:
    """Units in `layer`; a missing layer raises LookupError naming the indexed ones."""
    info = run_sql_file(con, "layer_info", layer=layer)
    if info.num_rows == 0:
        names = run_sql_file(con, "layer_names").column("layer").to_pylist()
        raise UnknownNameError(f"layer {layer!r} is not in this index; indexed layers: {', '.join(names)}")
    return int(info.column("channels")[0].as_py())


def top_images(con: duckdb.DuckDBPyConnection, layer: str, units: list[int], k: int) -> pa.Table:
    """Top-k rows (joined with images) for `units` of `layer`; units are checked against the layer."""
    channels = layer_channels(con, layer)
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise UnknownNameError(f"unit {bad[0]} is out of range: layer {layer!r} has units 0-{channels - 1}")
    return run_sql_file(con, "top_images", layer=layer, units=units, k=k)
