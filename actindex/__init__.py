"""actindex: which images most excite unit k in layer L, over a whole dataset.

    import actindex
    actindex.index("photos/", out="idx/", model="resnet18", layers=["layer4"])
    idx = actindex.open("idx/")
    idx.top("layer4", 7, k=9)          # an Arrow table
    idx.grid("layer4", 7)              # a PIL image (shows inline in Jupyter)

Subpackages: `actindex.pipeline` (the library: one batch of images), `actindex.jobs` (execution and the
CLI) and `actindex.queries` (SQL, DuckDB, grids and the report). Nothing heavy is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actindex.jobs.index import Summary
    from actindex.queries.api import Index

__version__ = "0.1.0"
__all__ = ["index", "open"]

# In a checkout the library folders sit beside this one (pyproject.toml maps them under `actindex` when the
# project is installed). Adding the checkout to this package's path makes a checkout work with nothing of it
# installed: what `ray job submit --working-dir .` uploads runs as uploaded, whatever the nodes installed.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "pipeline").is_dir() and (_checkout / "pipeline" / "writer.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's __path__)


def open(location: str | Path) -> Index:  # actindex.open, as gzip.open
    """Open an index (a directory or an s3:// URL) for queries, grids and reports: `actindex.queries.api`."""
    from actindex.queries.api import Index

    return Index(location)


def index(source: str | Path, out: str | Path, layers: str | Sequence[str], **options) -> Summary:
    """Run an index job, as `actindex index SOURCE --out OUT --layers LAYERS ...` does; `options` are the
    command's options with underscores (model="resnet18", k=9, executor="local", resize=64,
    mean=(0.5, 0.5, 0.5), label_column="caption", ...). Returns the run's summary; rerunning resumes."""
    from actindex.jobs.index import run_index
    from actindex.jobs.spec import index_request

    return run_index(index_request(str(source), str(out), layers, **options))
