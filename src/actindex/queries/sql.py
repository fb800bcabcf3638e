"""The SQL files of this package, and running them with bound parameters.

con = duckdb.connect()
table = run_sql_file(con, "layers")            # queries/layers.sql, as an Arrow table
text = sql_text("top_images")                  # the text of queries/top_images.sql
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


def sql_text(name: str) -> str:
    """The text of queries/<name>.sql (this package's files, wherever it is installed)."""
    return resources.files("actindex.queries").joinpath(f"{name}.sql").read_text()


def run_sql_file(con: duckdb.DuckDBPyConnection, name: str, **params) -> pa.Table:
    """Run queries/<name>.sql with bound parameters; returns an Arrow table."""
    return arrow_table(con.sql(sql_text(name), params=params))


def arrow_table(result) -> pa.Table:
    """The result as an Arrow table (DuckDB 2 renamed fetch_arrow_table to to_arrow_table)."""
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    return fetch()
