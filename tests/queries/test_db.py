"""DuckDB views read every table back with exactly the documented schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import schema
from queries.db import connect, top_images

DUCKDB_TYPES = {
    "int64": "BIGINT",
    "int32": "INTEGER",
    "int16": "SMALLINT",
    "float": "FLOAT",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "list<item: float>": "FLOAT[]",
}


@pytest.mark.parametrize("table", sorted(schema.TABLES))
def test_views_have_the_documented_schema(planted_index, table):
    _, con, _ = planted_index
    described = [(row[0], row[1]) for row in con.sql(f"DESCRIBE {table}").fetchall()]
    expected = [(f.name, DUCKDB_TYPES[str(f.type)]) for f in schema.TABLES[table]]
    assert described == expected


def test_readme_documents_every_column():
    text = (Path(__file__).parents[2] / "docs" / "tables.md").read_text()
    for name, table in schema.TABLES.items():
        assert f"## {name}" in text
        assert schema.markdown(table) in text, (
            f"docs/tables.md is stale for {name}: run python -m pipeline.schema"
        )


def test_empty_index_has_empty_views(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    con = connect(tmp_path)
    for table in schema.TABLES:
        assert con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 0


def test_top_images_binds_parameters(planted_index):
    _, con, _ = planted_index
    rows = top_images(con, "relu1", [0, 1], 2).to_pylist()
    assert [(r["unit"], r["rank"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    sql = (Path(__file__).parents[2] / "queries" / "top_images.sql").read_text()
    assert "$layer" in sql and not re.search(r"\{.*\}", sql)
