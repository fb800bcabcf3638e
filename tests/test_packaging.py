"""`pip install .` installs one import package, `actindex`, into a clean virtual environment.

The environment is a new venv whose only other path is a .pth line naming this environment's
site-packages, for the dependencies (torch, duckdb, ...): it gets no .pth file of this environment, so not
the editable install's finder, and nothing of the checkout unless pip installed it. The build runs
without isolation (pip would otherwise download setuptools) on this environment's setuptools.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd)


def test_a_checkout_runs_with_nothing_of_it_installed(clean_venv):
    """What `ray job submit --working-dir .` uploads: the checkout's own code, as actindex.*."""
    python = clean_venv / "bin" / "python"
    done = run(
        python, "import actindex.jobs.cli as c, actindex.queries.db as q; print(c.__file__, q.__file__)", REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(REPO / "jobs" / "cli.py"), str(REPO / "queries" / "db.py")]
    cli = subprocess.run([python, "-m", "actindex", "--help"], capture_output=True, text=True, cwd=REPO)
    assert cli.returncode == 0 and "Usage: python -m actindex" in cli.stdout, cli.stderr


def test_pip_install_installs_only_actindex(clean_venv, planted_index, tmp_path):
    python = clean_venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    source = tmp_path / "source"  # a copy: an in-tree build writes build/ and *.egg-info next to the code
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "actindex", "pipeline", "jobs", "queries"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    done = subprocess.run([*install, "--no-build-isolation", str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    files = run(python, "import importlib.metadata as m; print(*m.files('actindex'), sep='\\n')", tmp_path)
    paths = files.stdout.split()
    assert {Path(f).parts[0] for f in paths} == {"actindex", "actindex-0.1.0.dist-info", ".."}, paths
    assert "../../../bin/actindex" in paths and "actindex/queries/top_images.sql" in paths
    for name in ("pipeline", "jobs", "queries"):
        missing = run(python, f"import {name}", tmp_path)
        assert f"No module named '{name}'" in missing.stderr, (name, missing.stderr)

    summary, _, _ = planted_index
    code = (
        "import actindex\n"
        f"idx = actindex.open({str(summary.out)!r})\n"
        "print(actindex.__file__)\n"
        "print(*idx.top('relu1', 0, k=3).column('relpath').to_pylist())\n"
    )
    done = run(python, code, tmp_path)
    assert done.returncode == 0, done.stderr
    where, top = done.stdout.splitlines()
    assert where.startswith(str(clean_venv)) and top == "red/red0.png red/red1.png red/red2.png"
    cli = subprocess.run([clean_venv / "bin" / "actindex", "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and "Usage: actindex" in cli.stdout, cli.stderr
