"""The import contract (pyproject.toml, `[tool.importlinter]`): layers that only point down (jobs ->
queries -> pipeline), no import cycle among the siblings of any package, no actindex import inside a
function. It holds on the code, and it fails on a planted cycle, a planted upward import and a planted
import inside a function. `actindex --help` imports neither torch nor Ray nor DuckDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()",
]
CONTRACTS = {
    "layers": "jobs -> queries -> pipeline: layers only point down",
    "cycles": "no import cycles, among the siblings of any package",
    "inside": "no actindex import inside a function",
}


def lint(root: Path, src: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts on the package in `src`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO)])}
    command = [*LINT, "--config", str(root / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, cwd=root, env=env)


def verdicts(output: str) -> dict[str, str]:
    """contract -> KEPT or BROKEN, from lint-imports' report."""
    found = {}
    for key, name in CONTRACTS.items():
        line = next(line for line in output.splitlines() if line.startswith(name))
        found[key] = line.rsplit(" ", 1)[1]
    return found


def test_the_code_keeps_the_import_contract():
    done = lint(REPO, REPO / "src")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert verdicts(done.stdout) == {"layers": "KEPT", "cycles": "KEPT", "inside": "KEPT"}


@pytest.fixture
def planted(tmp_path):
    """A copy of the package and the contract, to plant violations in."""
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def plant(root: Path, module: str, code: str) -> None:
    path = root / "src" / "actindex" / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + "\n" + code + "\n")


@pytest.mark.parametrize(
    ("module", "code", "broken"),
    [
        # storage imports retry; retry importing storage closes a cycle in actindex.pipeline
        ("pipeline.retry", "from actindex.pipeline import storage  # noqa", {"cycles"}),
        # the library reaching up into the readers (which import the library: a cycle of siblings too)
        ("pipeline.patterns", "from actindex.queries import sql  # noqa", {"layers", "cycles"}),
        # a dependency hidden in a function
        ("pipeline.patterns", "def _late():\n    from actindex.pipeline import errors  # noqa", {"inside"}),
    ],
    ids=["cycle", "upward", "inside a function"],
)
def test_the_contract_fails_on_a_planted_violation(planted, module, code, broken):
    plant(planted, module, code)
    done = lint(planted, planted / "src")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    found = verdicts(done.stdout)
    assert {key for key, verdict in found.items() if verdict == "BROKEN"} == broken, found
    if "inside" in broken:
        assert "actindex.pipeline.patterns:" in done.stdout and "inside a function" in done.stdout


def test_help_imports_neither_torch_nor_ray_nor_duckdb(tmp_path):
    code = (
        "import sys\n"
        "from actindex.jobs.cli import main\n"
        "sys.argv = ['actindex', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('torch', 'torchvision', 'timm', 'ray', 'duckdb')\n"
        "print('heavy:', sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Usage: actindex" in done.stdout and "heavy: []" in done.stdout, done.stdout[-2000:]
