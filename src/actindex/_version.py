"""The one place actindex's version is written: pyproject.toml reads it (setuptools' dynamic version), so the
package's metadata, run.json and the report agree, in an installed copy and in a bare checkout alike."""

__version__ = "0.1.0"
