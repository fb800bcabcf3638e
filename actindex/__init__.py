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

__version__ = "0.1.0"

# In a checkout the library folders sit beside this one (pyproject.toml maps them under `actindex` when the
# project is installed). Adding the checkout to this package's path makes a checkout work with nothing of it
# installed: what `ray job submit --working-dir .` uploads runs as uploaded, whatever the nodes installed.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "pipeline").is_dir() and (_checkout / "pipeline" / "writer.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's __path__)
