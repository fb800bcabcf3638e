"""Each module's docstring opens with a usage snippet: it runs."""

from __future__ import annotations

import importlib
import textwrap

import numpy as np
import pytest
import torch
import torchvision

import actindex.pipeline.attribution as attribution

MODULES = ["targets", "trace", "rules", "projection", "occlusion", "contributions", "prepare", "__init__"]


def snippet(doc: str) -> str:
    """The first indented block of a docstring."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("    ")), len(lines))
    return textwrap.dedent("\n".join(lines[start:end]))


@pytest.mark.parametrize("name", MODULES)
def test_usage_snippet_runs(name):
    package = "actindex.pipeline.attribution"
    module = importlib.import_module(package if name == "__init__" else f"{package}.{name}")
    namespace = {"torch": torch, "torchvision": torchvision, "np": np, **vars(attribution), **vars(module)}
    exec(compile(snippet(module.__doc__), f"{name} docstring", "exec"), namespace)
