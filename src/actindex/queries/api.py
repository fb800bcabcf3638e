"""The Python API: an index opened from a notebook or a script (`actindex.open`).

    import actindex
    idx = actindex.open("idx/")                      # a directory, or s3://bucket/idx/
    idx.layers().df()                                # pandas; .pl() gives polars
    idx.sql("SELECT unit, max(act) AS peak FROM activations WHERE layer = $layer GROUP BY unit",
            layer="layer4")                          # bound parameters, never formatted in
    idx.top("layer4", 7, k=9)                        # rank, act, label, file and box of each image
    idx.grid("layer4", [7, 8], k=9, mask="highlight")  # a PIL image: shows inline in Jupyter
    idx.label_selectivity("fc", k=20).df()           # the analysis catalog, one method per query
    idx.report("site/", layers="layer4", units="0-99")

Queries answer from the shards that were complete when the index was opened; `refresh()` sees a running
job's newer shards. Errors are the CLI's: `LookupError` subclasses for unknown layers and units,
`actindex.pipeline.errors.UserError` for everything a user can fix.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actindex.pipeline.errors import InvalidInputError, MissingInputError
from actindex.queries import catalog
from actindex.queries.db import compare_topk, connect, unit_tops
from actindex.queries.explain import Show, unit_explanations
from actindex.queries.grid import as_units
from actindex.queries.report import ReportConfig, plan_report, write_report
from actindex.queries.sheet import GridOptions, unit_sheet
from actindex.queries.sql import arrow_table, run_sql_file

if TYPE_CHECKING:
    import duckdb
    from PIL import Image

PREVIEW_ROWS = 20  # rows a notebook shows of a Result


class Result:
    """A query's answer: the Arrow table is `.arrow`; `.df()` gives pandas and `.pl()` polars. Every Arrow
    Table attribute works on it too (`num_rows`, `column("act")`, `to_pylist()`), and any Arrow consumer
    takes it as it is (`pa.table(result)`, `polars.DataFrame(result)`, DuckDB): it exports the Arrow
    C stream."""

    def __init__(self, table: pa.Table, notes: Sequence[str] = ()):
        self.arrow = table
        self.notes = list(notes)  # what the reader should know about the answer (as `actindex top` prints)

    def df(self):
        return self.arrow.to_pandas()

    def pl(self):
        try:
            import polars
        except ImportError:
            raise ImportError("Result.pl() needs polars: pip install polars") from None
        return polars.from_arrow(self.arrow)

    def __arrow_c_stream__(self, requested_schema=None):
        return self.arrow.__arrow_c_stream__(requested_schema)

    def __getattr__(self, name: str):
        return getattr(self.arrow, name)

    def __getitem__(self, key):
        return self.arrow[key]

    def __len__(self) -> int:
        return self.arrow.num_rows

    def __eq__(self, other) -> bool:
        other = other.arrow if isinstance(other, Result) else other
        return isinstance(other, pa.Table) and self.arrow.equals(other)

    __hash__ = None  # mutable-looking and compared by value, like pa.Table

    def __repr__(self) -> str:
        return f"Result: {self.arrow.num_rows} rows\n{self.arrow.slice(0, PREVIEW_ROWS)}"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(name)}</th>" for name in self.arrow.column_names)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>"
            for row in self.arrow.slice(0, PREVIEW_ROWS).to_pylist()
        )
        more = f" (first {PREVIEW_ROWS} shown)" if self.arrow.num_rows > PREVIEW_ROWS else ""
        caption = f"<caption>{self.arrow.num_rows} rows{more}</caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class Index:
    """An opened index: its DuckDB views (images, layers, activations, topk) and the questions the CLI
    answers, as methods. Opening reads the manifest and the shard markers; it fails at once
    (NotAnIndexError) where there is no index."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.con: duckdb.DuckDBPyConnection = connect(self.location)

    def refresh(self) -> Index:
        """See the shards completed since the index was opened (a job may be writing it)."""
        self.con.close()
        self.con = connect(self.location)
        return self

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        layers = self.layers().column("layer").to_pylist()
        return f"<actindex index {self.location}: layers {', '.join(layers)}>"

    def sql(self, query: str, **params) -> Result | None:
        """Run SQL over the index's views; `$name` placeholders are bound from `params`. A statement DuckDB
        answers with nothing returns None."""
        result = self.con.sql(query, params=params or None)
        return None if result is None else Result(arrow_table(result))

    def layers(self) -> Result:
        """The layers table: type, channels, feature-map size, receptive field, preprocessing."""
        return Result(run_sql_file(self.con, "layers"))

    def units(self, layer: str | None = None) -> Result:
        """The units view: every unit of `layer` (or of every layer) and its name, NULL where it has none."""
        where = "" if layer is None else " WHERE layer = $layer"
        params = {} if layer is None else {"layer": layer}
        return self.sql(f"SELECT * FROM units{where} ORDER BY layer, unit", **params)

    # the analysis catalog (queries/catalog/*.sql; in SQL: SELECT * FROM label_selectivity('layer4'))

    def label_selectivity(self, layer: str, k: int | None = None) -> Result:
        """Per unit: the share of each label among its top-k images, its dominant label and purity; on an
        index without labels, a note says why purity is NULL (also as a warning)."""
        notes = catalog.label_notes(self.con)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return Result(catalog.label_selectivity(self.con, layer, k), notes)

    def image_units(self, layer: str, image: str | int, n: int = 10) -> Result:
        """The n units that `image` (relpath, uri or image_id) excites most, relative to each unit's p99."""
        return Result(catalog.image_units(self.con, layer, image, n))

    def unit_stats(self, layer: str, k: int | None = None, family: str = "stem") -> Result:
        """Per unit: quantiles of its per-image maxima, dead or not, and how many image families its top-k
        holds ('stem', 'folder' or 'label')."""
        return Result(catalog.unit_stats(self.con, layer, k, family))

    def contributions(self, layer: str, unit: int, n: int = 10) -> Result:
        """The units of lower layers that build `unit` (`actindex contributions`): columns src_layer,
        src_unit, score (signed: negative inhibits), share, rank; best first, at most `n` per lower layer."""
        table = catalog.built_from(self.con, layer, int(unit))
        table = table.filter(pc.less_equal(table.column("rank"), n))
        return Result(table.select(["src_layer", "src_unit", "score", "share", "rank"]))

    def feeds(self, src_layer: str, src_unit: int, n: int = 10) -> Result:
        """The units of higher layers that `src_unit` of `src_layer` feeds most (columns layer, unit, name,
        score, share, rank)."""
        return Result(catalog.feeds(self.con, src_layer, int(src_unit), n))

    def topk_drift(self, other: str | Path | Index, layer: str, k: int | None = None) -> Result:
        """Per unit: how its top-k moved between this index and `other` (of the same images: another
        checkpoint or seed), most changed first."""
        other = other.location if isinstance(other, Index) else str(other)
        return Result(compare_topk(self.location, other, layer, k))

    def top(self, layer: str, unit: int, k: int = 9) -> Result:
        """The unit's top-k images (the columns of queries/top_images.sql), exact beyond the topk table's
        k; `.notes` says where the answer came from when it is not the topk table."""
        tops = unit_tops(self.location, layer, [int(unit)], k)
        return Result(tops.rows, tops.notes)

    def projection(
        self, layer: str, unit: int, rank: int = 1, method: str = "deconvnet", *, trust_code: bool = False
    ) -> np.ndarray:
        """The unit's value at its peak on its rank-th top image, projected back to the pixels (deconvnet:
        Zeiler & Fergus's rule; guided: guided backpropagation; gradient): float32 (h, w, 3) over exactly
        the box `top(layer, unit)` gives for that rank, in original-image pixels, NaN where the model saw
        nothing. queries.explain.projection_image draws it as Z&F's grey image."""
        return self._explained(layer, unit, rank, Show.projection, method=method, trust_code=trust_code)

    def occlusion(
        self,
        layer: str,
        unit: int,
        rank: int = 1,
        window: int | None = None,
        stride: int | None = None,
        *,
        trust_code: bool = False,
    ) -> np.ndarray:
        """How much a grey square over each part of the unit's receptive field lowers its value at its peak
        on its rank-th top image: float32 (h, w) over the box of `top(layer, unit)` for that rank, each
        pixel the mean drop of the windows covering it. `window` and `stride` are in model-input pixels
        (default: a quarter of the box's shorter side, and half that)."""
        return self._explained(
            layer, unit, rank, Show.occlusion, window=window, stride=stride, trust_code=trust_code
        )

    def _explained(self, layer: str, unit: int, rank: int, show: Show, **options) -> np.ndarray:
        if rank < 1:
            raise InvalidInputError(f"rank {rank}: ranks start at 1")
        rows = unit_tops(self.location, layer, [int(unit)], rank).rows
        rows = rows.filter(pc.equal(rows.column("rank"), rank))
        if rows.num_rows == 0:
            raise LookupError(f"{layer} unit {unit} has no top image of rank {rank}")
        found = unit_explanations(self.location, rows, show, **options)
        if found.maps[0] is None:
            raise MissingInputError(found.notes[0])
        return found.maps[0]

    def grid(self, layer: str, units: int | str | Sequence[int], **options) -> Image.Image:
        """The sheet of `actindex grid`: each unit's top-k receptive-field crops (or, with show="projection"
        or "occlusion", what drives the unit in them), with its activation mask drawn over them where `mask`
        is "highlight" or "heat". `options` are the command's options (queries.sheet.GridOptions: k, tile,
        layout, show, method, window, stride, mask, threshold, trust_code), with the same defaults.
        What `actindex grid` prints as notes comes as warnings."""

        sheet = unit_sheet(self.location, layer, as_units(units), GridOptions(**options))
        for note in sheet.notes:
            warnings.warn(note, stacklevel=2)
        return sheet.image

    def report(self, out: str | Path, **options) -> Path:
        """Write the static site of `actindex report` into `out`; `options` are its options (ReportConfig:
        layers, units, k, tile, mask, threshold, trust_code, workers). Returns the site's index.html."""

        summary = write_report(plan_report(ReportConfig(index=self.location, out=Path(out), **options)))
        for note in summary.notes:
            warnings.warn(note, stacklevel=2)
        return summary.out / "index.html"
