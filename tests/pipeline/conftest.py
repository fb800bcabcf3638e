"""Shared settings for the pipeline tests."""

from __future__ import annotations

import torch

# The models in these tests are tiny; on a small, shared CPU box intra-op threads only fight each other
# (a resnet18 forward on 3x64x64 went from ~0.8 s to ~0.04 s with one thread). Results do not depend on it.
torch.set_num_threads(1)
