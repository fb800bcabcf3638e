"""actindex: which images most excite unit k in layer L, over a whole dataset.

    import actindex
    actindex.index("photos/", out="idx/", model="resnet18", layers=["layer4"])
    idx = actindex.open("idx/")
    idx.top("layer4", 7, k=9)          # an Arrow table
    idx.grid("layer4", 7)              # a PIL image (shows inline in Jupyter)

Subpackages: `actindex.pipeline` (the library: one batch of images), `actindex.jobs` (execution and the
CLI) and `actindex.queries` (SQL, DuckDB, grids and the report). torch, Ray and DuckDB are imported only
where they are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from actindex._version import __version__

if TYPE_CHECKING:
    from actindex.jobs.indexing import Summary
    from actindex.queries.api import Index

__all__ = ["__version__", "index", "open"]

# The one exception to "no actindex import inside a function" (tests/import_contracts.py): this module runs
# on every `import actindex.<anything>`, and must stay light (the GPU stage imports actindex.pipeline.gpu
# with neither pyarrow nor typer), so its two conveniences import the API when they are first called.


def open(location: str | Path) -> Index:  # actindex.open, as gzip.open
    """Open an index (a directory or an s3:// URL) for queries, grids and reports: `actindex.queries.api`."""
    from actindex.queries.api import Index

    return Index(location)


def index(source: str | Path, out: str | Path, layers: str | Sequence[str], **options) -> Summary:
    """Run an index job, as `actindex index SOURCE --out OUT --layers LAYERS ...` does; `options` are the
    command's options with underscores (model="resnet18", k=9, executor="local", resize=64,
    mean=(0.5, 0.5, 0.5), label_column="caption", ...). Returns the run's summary; rerunning resumes."""
    from actindex.jobs.indexing import run_index
    from actindex.jobs.spec import index_request

    return run_index(index_request(str(source), str(out), layers, **options))
