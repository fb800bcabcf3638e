"""Every table directory of an index opens, with no options, in the Parquet readers people use: pandas,
pyarrow (read_table, ParquetDataset, dataset with hive partitioning), polars and DuckDB. Each gives the
rows and column types of the index's own DuckDB views."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from actindex.pipeline import schema
from actindex.queries.db import connect
from actindex.queries.sql import arrow_table

TABLES = ["images", "activations", "topk"]


def _pandas(path):
    return pa.Table.from_pandas(pd.read_parquet(path), preserve_index=False)


def _polars(path):
    return pl.read_parquet(path).to_arrow()


def _duckdb(path):
    return arrow_table(duckdb.sql(f"SELECT * FROM '{path}/**/*.parquet'"))


READERS = {
    "pandas.read_parquet": _pandas,
    "pyarrow.parquet.read_table": pq.read_table,
    "pyarrow.parquet.ParquetDataset": lambda path: pq.ParquetDataset(path).read(),
    "pyarrow.dataset(hive)": lambda path: ds.dataset(path, partitioning="hive").to_table(),
    "polars.read_parquet": _polars,
    "duckdb": _duckdb,
}


def _plain(table: pa.Table, names: list[str]) -> pa.Table:
    """The table's columns in `names` order, dictionaries (categoricals) decoded, large strings as strings."""
    columns = []
    for name in names:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
            column = column.cast(pa.string())
        columns.append(column.combine_chunks())
    return pa.table(columns, names=names)


def _sorted_rows(table: pa.Table, keys: list[str]) -> list[tuple]:
    table = table.sort_by([(key, "ascending") for key in keys])
    return list(zip(*(table.column(n).to_pylist() for n in table.column_names), strict=True))


SORT_KEYS = {
    "images": ["image_id"],
    "activations": ["layer", "unit", "image_id"],
    "topk": ["layer", "unit", "rank"],
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", TABLES)
def test_every_reader_opens_every_table_with_the_views_rows_and_types(local_index_dir, name, reader):
    want = arrow_table(connect(local_index_dir).sql(f"SELECT * FROM {name}"))
    assert want.num_rows > 0
    got = READERS[reader](str(local_index_dir / name))
    assert sorted(got.column_names) == sorted(schema.TABLES[name].names)
    got = _plain(got, schema.TABLES[name].names)
    for field in schema.TABLES[name]:  # the schema's types, as the views give them
        assert got.schema.field(field.name).type == field.type, (reader, field.name)
    keys = SORT_KEYS[name]
    assert _sorted_rows(got, keys) == _sorted_rows(_plain(want, want.column_names), keys)


def test_layers_file_opens_everywhere(local_index_dir):
    path = local_index_dir / "layers.parquet"
    want = pq.read_table(path)
    assert pd.read_parquet(path).shape == (want.num_rows, len(schema.LAYERS))
    assert pl.read_parquet(path).height == want.num_rows
    assert duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall()[0][0] == want.num_rows


def test_partitioned_files_hold_no_layer_column(local_index_dir):
    files = sorted((local_index_dir / "activations").rglob("*.parquet")) + sorted(
        (local_index_dir / "topk").rglob("*.parquet")
    )
    assert files and all(f.parent.name.startswith("layer=") for f in files)
    for path in files:
        assert "layer" not in pq.read_schema(path).names


NUMBERED = "python:tests.queries.test_readers:numbered"


def numbered():
    """A model whose layers are named by numbers, as in a bare nn.Sequential."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)).eval()


def test_layers_named_by_numbers_stay_text_in_the_views(natural_dataset, tmp_path):
    from actindex.jobs.indexing import run_index
    from actindex.jobs.spec import IndexRequest

    out = tmp_path / "idx"
    request = IndexRequest(
        source=str(natural_dataset),
        out=str(out),
        model=NUMBERED,
        layers=("0", "2"),
        preprocessing={"resize": 32, "crop": 32},
        trust_code=True,
        k=3,
        executor="local",
        progress=False,
    )
    run_index(request)
    con = connect(out)
    for table in ("activations", "topk"):
        rows = con.sql(f"SELECT layer, count(*) FROM {table} GROUP BY 1 ORDER BY 1").fetchall()
        assert [layer for layer, _ in rows] == ["0", "2"]
    assert con.sql("SELECT typeof(layer) FROM topk LIMIT 1").fetchall()[0][0] == "VARCHAR"
    counts = dict(con.sql("SELECT layer, count(*) FROM activations GROUP BY 1").fetchall())
    assert counts == {"0": 14 * 4, "2": 14 * 2}
    top = con.sql("SELECT act FROM topk WHERE layer = '2' AND unit = 1 ORDER BY rank").fetchall()
    best = con.sql("SELECT max(act) FROM activations WHERE layer = '2' AND unit = 1").fetchall()[0][0]
    assert np.float32(top[0][0]) == np.float32(best)
