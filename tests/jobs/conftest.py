"""Fixtures of the job and CLI tests."""

from __future__ import annotations

import pytest

from tests.jobs.test_cli import PLANTED, invoke


@pytest.fixture(scope="session")
def planted_cli_index(planted_dataset, tmp_path_factory):
    folder, _ = planted_dataset
    out = tmp_path_factory.mktemp("cli") / "idx"
    result = invoke(
        "index", folder, "--out", out, "--model", PLANTED, "--layers", "relu*,head", "--k", "3",
        "--executor", "local", "--trust-code", "--resize", "64", "--crop", "64", "--interpolation", "nearest",
        "--mean", "0,0,0", "--std", "1,1,1", "--no-progress", "--shard-size", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output
