"""Models and decoder plugins that fail on purpose, for the failure tests.

Models are loaded by the job as `python:tests.faults:NAME` (with trust_code). A flag file in
flag_dir() arms a one-shot fault: the first process that sees it removes it and fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torchvision.models.resnet import BasicBlock, ResNet


def flag_dir() -> Path:
    """This test session's folder (tests/conftest.py sets ACTINDEX_TEST_FAULTS_DIR; the jobs and Ray workers
    the session starts inherit it), so that a test session running beside it on the same machine can
    neither fire nor take its flags."""
    default = Path(tempfile.gettempdir()) / "actindex-test-faults"
    return Path(os.environ.get("ACTINDEX_TEST_FAULTS_DIR") or default)


def arm(name: str) -> Path:
    flag_dir().mkdir(parents=True, exist_ok=True)
    flag = flag_dir() / name
    flag.write_text("armed")
    return flag


def _fire(name: str) -> bool:
    try:
        (flag_dir() / name).unlink()
        return True
    except FileNotFoundError:
        return False


class _ResNet18(ResNet):
    """torchvision's resnet18 (same modules, same seeded weights) with a hook for faults."""

    def __init__(self):
        super().__init__(BasicBlock, [2, 2, 2, 2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fault(x)
        return super().forward(x)

    def fault(self, x: torch.Tensor) -> None:
        pass


class DieOnce(_ResNet18):
    """Kills its own process (like a crashed worker) the first time the flag `die-once` is armed."""

    def fault(self, x):
        if x.shape[0] > 1 and _fire("die-once"):
            os._exit(1)


class RaiseOnce(_ResNet18):
    """Raises a RuntimeError the first time the flag `raise-once` is armed."""

    def fault(self, x):
        if x.shape[0] > 1 and _fire("raise-once"):
            raise RuntimeError("injected transient fault")


class OutOfMemory(_ResNet18):
    """Runs out of memory on any batch of more than one image, and on a pure white image."""

    def fault(self, x):
        if x.shape[0] > 1 or bool((x > 2.0).all()):
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 20.00 GiB")


def resnet18() -> ResNet:
    return _ResNet18()


class Slow(_ResNet18):
    """resnet18, one second slower per forward (the same weights and results): spreads a small job's
    shards over every actor of a test cluster, whichever starts first."""

    def fault(self, x):
        import time

        time.sleep(1.0)
