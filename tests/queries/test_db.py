"""DuckDB views read every table back with exactly the documented schema."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from actindex.pipeline import schema
from actindex.queries.db import connect, top_images

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


def test_docs_tables_is_generated_from_the_schema():
    text = (Path(__file__).parents[2] / "docs" / "tables.md").read_text()
    assert text == schema.tables_markdown(), (
        "docs/tables.md is stale: python -m actindex.pipeline.schema > docs/tables.md"
    )


INDEX_PAGE = Path(__file__).parents[2] / "docs" / "index-format.md"
STATUS_VALUES = "(`ok`/`error`)"  # the values of images.status, named in the images entry of INDEX_PAGE


def index_page_table_entries() -> dict[str, set[str]]:
    """The short list of each table's columns on "The index on disk" (docs/index-format.md): {table: every
    `name` its entry mentions}."""
    text = INDEX_PAGE.read_text()
    section = text[text.index("# The index on disk") :]
    entries = re.findall(r"^- `(\w+)`: (.*?)(?=^- `|^$)", section, flags=re.M | re.S)
    return {
        name: set(re.findall(r"`([a-z_*0-9]+)`", body.replace(STATUS_VALUES, ""))) for name, body in entries
    }


def test_the_index_page_lists_exactly_the_columns_of_every_table():
    entries = index_page_table_entries()
    assert set(entries) == set(schema.TABLES)
    for name, mentioned in entries.items():
        columns = schema.TABLES[name].names
        for word in mentioned:  # a name the page gives that the table does not have (`shard` once)
            assert any(fnmatch.fnmatchcase(c, word) for c in columns), (
                f"{INDEX_PAGE.name}: {name} has no column {word!r}"
            )
        for column in columns:  # a column the page forgets
            assert any(fnmatch.fnmatchcase(column, w) for w in mentioned), (
                f"{INDEX_PAGE.name}: {name}.{column} missing"
            )


def test_the_index_page_check_catches_a_column_that_does_not_exist(monkeypatch):
    real = Path.read_text

    def with_shard(self, *args, **kwargs):
        text = real(self, *args, **kwargs)
        return text.replace("`label`, `status`", "`label`, `shard`, `status`") if self == INDEX_PAGE else text

    monkeypatch.setattr(Path, "read_text", with_shard)
    with pytest.raises(AssertionError, match="images has no column 'shard'"):
        test_the_index_page_lists_exactly_the_columns_of_every_table()


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


def test_the_not_an_index_hint_never_writes_into_the_folder_named(tmp_path):
    """`actindex top PHOTOS/` by mistake: the hint must not be `actindex index ... --out PHOTOS/`."""
    from actindex.pipeline.errors import MissingInputError
    from actindex.queries.db import connect

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    with pytest.raises(MissingInputError) as refused:
        connect(f"{photos}/")
    message = str(refused.value)
    assert "is not an actindex index" in message and f"--out {photos}-index" in message, message
    assert f"--out {photos} " not in message and f"--out {photos}/" not in message


def test_label_selectivity_says_why_an_unlabelled_index_has_no_purity():
    import duckdb

    from actindex.queries.catalog import label_notes

    con = duckdb.connect()
    con.execute("CREATE VIEW images AS SELECT * FROM (VALUES (NULL::VARCHAR), (NULL)) t(label)")
    assert "purity is NULL" in " ".join(label_notes(con))
    con.execute("CREATE OR REPLACE VIEW images AS SELECT * FROM (VALUES ('cat'), (NULL)) t(label)")
    assert label_notes(con) == []
