"""An import-linter contract type: no import of the project's own modules inside a function.

An import inside a function hides a dependency from a reader (and, there, usually a cycle); third-party
modules that are slow to import (torch, duckdb, ray, ...) are what may be imported late. Configured in
pyproject.toml (`[tool.importlinter]`, contract type `no_function_imports`) and run by tests/test_imports.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class NoFunctionLevelImports(Contract):
    type_name = "no_function_imports"

    packages = fields.ListField(subfield=fields.StringField())
    allowed_in = fields.ListField(subfield=fields.StringField(), required=False)  # modules exempted

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        found = []
        allowed = set(self.allowed_in or ())  # type: ignore[attr-defined]
        for package in self.packages:  # type: ignore[attr-defined]
            for module in sorted((graph.find_descendants(package) | {package}) - allowed):
                found += [(module, line, name) for line, name in _function_imports(module, package)]
        return ContractCheck(kept=not found, warnings=[], metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        from importlinter.application import output

        for module, line, name in check.metadata["found"]:
            output.print_error(f"{module}:{line} imports {name} inside a function", bold=False)


def _function_imports(module: str, package: str) -> list[tuple[int, str]]:
    path = _source(module)
    if path is None:
        return []
    found: set[tuple[int, str]] = set()  # a set: a nested function's imports are also its parent's
    for function in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else [f"(relative) {node.module}"]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            found |= {
                (node.lineno, name) for name in names if name.split(".")[0] == package or "relative" in name
            }
    return sorted(found)


def _source(module: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None
