"""The Python API (`import actindex`): indexing with the CLI's options, and an opened index's answers."""

from __future__ import annotations

import click
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import typer

import actindex
from actindex.jobs.cli import app
from actindex.jobs.spec import COLUMN_OPTIONS, PREPROCESSING_OPTIONS, IndexRequest, index_request
from actindex.pipeline.errors import InvalidInputError, UnknownNameError
from actindex.queries.api import Result
from actindex.queries.db import NotAnIndexError
from tests.jobs.test_cli import PLANTED
from tests.tables import assert_same_tables

# the options of tests/jobs/conftest.py's planted_cli_index, as a notebook passes them
PLANTED_OPTIONS = dict(
    model=PLANTED, k=3, executor="local", trust_code=True, resize=64, crop=64, interpolation="nearest",
    mean=(0, 0, 0), std="1,1,1", progress=False, shard_size=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def api_index(planted_dataset, tmp_path_factory):
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("api") / "idx"
    summary = actindex.index(folder, out, "relu*,head", **PLANTED_OPTIONS)
    assert (summary.indexed, summary.failed) == (9, 0)
    return out


def test_index_with_the_clis_options_writes_the_clis_index(api_index, planted_cli_index):
    cli_out, _ = planted_cli_index
    assert_same_tables(api_index, cli_out)


def test_every_option_of_the_index_command_is_an_option_of_actindex_index():
    command = typer.main.get_command(app).commands["index"]
    cli = {p.name for p in command.params if isinstance(p, click.Option)} - {"strict"}  # an exit code
    fields = {f for f in IndexRequest.__dataclass_fields__}
    assert cli <= fields | set(PREPROCESSING_OPTIONS) | set(COLUMN_OPTIONS), cli - fields
    request = index_request("photos/", "idx/", ["layer4"], mean="0.5,0.5,0.5", label_column="caption", k=5)
    assert request.preprocessing == {"mean": (0.5, 0.5, 0.5)} and request.columns.label == "caption"
    with pytest.raises(InvalidInputError, match="unknown index option.*bogus"):
        index_request("photos/", "idx/", "layer4", bogus=1)
    with pytest.raises(InvalidInputError, match="mean needs three numbers"):
        index_request("photos/", "idx/", "layer4", mean=(0.5, 0.5))


def test_sql_binds_parameters_and_gives_arrow_pandas_and_polars(api_index):
    idx = actindex.open(api_index)
    query = "SELECT unit, max(act) AS peak FROM activations WHERE layer = $layer GROUP BY unit ORDER BY unit"
    result = idx.sql(query, layer="relu1")
    assert isinstance(result, Result) and isinstance(result.arrow, pa.Table)
    assert result.num_rows == 2 and result.column_names == ["unit", "peak"]
    assert isinstance(result.df(), pd.DataFrame) and result.df()["unit"].tolist() == [0, 1]
    assert isinstance(result.pl(), pl.DataFrame) and result.pl()["unit"].to_list() == [0, 1]
    assert pa.table(result).equals(result.arrow) and result == result.arrow  # the Arrow C stream
    assert "<th>peak</th>" in result._repr_html_() and "2 rows" in repr(result)
    assert idx.layers().column("layer").to_pylist() == ["relu1", "relu2", "head"]
    idx.sql("CREATE VIEW reds AS SELECT * FROM images WHERE label = 'red'")  # statements run too
    assert idx.sql("SELECT count(*) AS n FROM reds").to_pylist() == [{"n": 3}]
    assert "relu1, relu2, head" in repr(idx)


def test_top_and_grid_answer_like_the_cli(api_index):
    with actindex.open(str(api_index)) as idx:
        top = idx.top("relu1", 0, k=3)  # the planted red detector
        assert [p.rsplit("/", 1)[-1] for p in top.column("relpath").to_pylist()] == [
            "red0.png",
            "red1.png",
            "red2.png",
        ]
        assert top.notes == [] and top.column("rank").to_pylist() == [1, 2, 3]
        assert idx.top("relu1", 0, k=5).notes  # beyond the topk table's k: from activations, and says so
        sheet = idx.grid("relu2", [0, 1], k=3, tile=64)
        label_w, tile = 64 + 16, 64
        r, g, b = sheet.convert("RGB").getpixel((label_w + tile // 2, 2 + tile // 2))
        assert r > 150 and g < 60 and b < 60  # the red unit's best crop is centred on the red square
        assert hasattr(sheet, "_repr_png_")  # Jupyter shows it inline
        with pytest.raises(UnknownNameError, match="out of range"):
            idx.top("relu1", 7)


def test_open_refuses_what_is_not_an_index(tmp_path):
    with pytest.raises(NotAnIndexError):
        actindex.open(tmp_path)


def test_grid_masks_and_the_report_from_python(api_index, tmp_path):
    idx = actindex.open(api_index)
    plain = idx.grid("relu2", 0, k=1, tile=64).convert("RGB")
    masked = idx.grid("relu2", 0, k=1, tile=64, mask="highlight", trust_code=True).convert("RGB")
    label_w = 64 + 16
    inside, corner = (label_w + 32, 2 + 32), (label_w + 2, 2 + 2)  # the red square; the crop's corner
    assert masked.getpixel(inside) == plain.getpixel(inside)  # the square is in the mask: left as it is
    assert all(m <= p // 3 + 1 for m, p in zip(masked.getpixel(corner), plain.getpixel(corner), strict=True))
    with pytest.warns(UserWarning, match="class activation map"):  # head max-pools: no CAM, and it says so
        site = idx.report(tmp_path / "site", layers="relu2,head", units=[0, 1], k=3, trust_code=True)
    assert site == tmp_path / "site" / "index.html" and site.is_file()
    files = [p.name for p in (tmp_path / "site" / "layers" / "layer=relu2").iterdir()]
    assert len(files) == 2 * 2 * 3 and sum(".projection." in name for name in files) == 2 * 3  # by default


def test_the_catalog_and_the_units_as_methods(api_index, planted_cli_index):
    idx = actindex.open(api_index)
    pure = {r["unit"]: r for r in idx.label_selectivity("relu1", k=3).to_pylist()}
    assert (pure[0]["dominant_label"], pure[0]["purity"]) == ("red", 1.0)  # the planted red detector
    assert idx.image_units("relu1", "red/red0.png", n=1).column("unit").to_pylist() == [0]
    stats = idx.unit_stats("relu1").to_pylist()
    peaks = idx.sql("SELECT unit, max(act) AS m FROM activations WHERE layer = 'relu1' GROUP BY unit")
    assert {r["unit"]: r["max"] for r in stats} == {r["unit"]: r["m"] for r in peaks.to_pylist()}
    cli_out, _ = planted_cli_index  # the same images and model: nothing moved
    drift = idx.topk_drift(cli_out, "relu2").to_pylist()
    assert len(drift) == 2 and all(r["overlap"] == 1.0 and r["drift"] == 0 for r in drift)
    assert idx.topk_drift(actindex.open(cli_out), "relu2") == idx.topk_drift(str(cli_out), "relu2")
    units = idx.units("head")
    assert units.column("unit").to_pylist() == [0, 1] and units.column("name").to_pylist() == [None, None]
    assert idx.units().num_rows == 2 + 2 + 2
