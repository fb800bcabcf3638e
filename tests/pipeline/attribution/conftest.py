"""Tiny networks with planted detectors and synthetic images whose right answer is known.

Inputs are normalized with mean 0 and std 1 (as actindex's PLANTED_PREP), so pixels in [0, 1] are the model
inputs and the occluding "grey" (the mean) is 0.

RedNet: conv1 unit 0 fires on red (R - G - B over a 3x3 window; nothing else makes it fire), unit 1 on a
dark-to-bright vertical edge; relu1 -> pool -> conv2 (5x5 centre-weighted bump: units follow conv1's)
-> relu2 -> pool2 -> conv3 (the same bump) -> relu3. The first five layers are actindex's PlantedNet
(tests/conftest.py there); pool2 and conv3 widen the receptive field of relu3 to 30 px.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from actindex.pipeline.attribution.targets import Targets

SIDE = 64  # image side, model-input pixels
SQUARE = 8  # red square side
GREY, RED = (0.5, 0.5, 0.5), (0.94, 0.04, 0.04)
SQUARES = [(12, 16), (36, 28), (24, 40)]  # (x, y) of each image's red square (top-left corner)


class RedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 2, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2, 2, 5, padding=2)
        self.relu3 = nn.ReLU()
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[0, 0], self.conv1.weight[0, 1:] = 1 / 9, -1 / 9  # red: R - G - B
            self.conv1.weight[1, :, :, 0], self.conv1.weight[1, :, :, 2] = -1 / 9, 1 / 9  # dark | bright
            self.conv1.bias.copy_(torch.tensor([-0.5, -0.6]))
            bump = torch.outer(*[torch.tensor([0.25, 0.5, 1.0, 0.5, 0.25])] * 2)
            for conv in (self.conv2, self.conv3):
                conv.weight.zero_()
                conv.weight[0, 0] = conv.weight[1, 1] = bump
                conv.bias.zero_()

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        return self.relu3(self.conv3(self.pool2(self.relu2(self.conv2(x)))))


class OneByOne(nn.Module):
    """Two 1x1 layers: layer1 channels a = b = ReLU(R), c = ReLU(G), d = ReLU(B);
    layer2 unit 0 = ReLU(2 a + 1 b), unit 1 = ReLU(c); every other weight 0."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 2, 1), nn.ReLU()
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.zero_()
                conv.bias.zero_()
            self.conv1.weight[[0, 1, 2, 3], [0, 0, 1, 2], 0, 0] = 1.0
            self.conv2.weight[0, 0, 0, 0], self.conv2.weight[0, 1, 0, 0] = 2.0, 1.0
            self.conv2.weight[1, 2, 0, 0] = 1.0

    def forward(self, x):
        return self.relu2(self.conv2(self.relu1(self.conv1(x))))


def red_images(squares=SQUARES) -> torch.Tensor:
    """(N, 3, SIDE, SIDE): grey, each with one red square at squares[i] (top-left x, y)."""
    images = torch.tensor(GREY).view(1, 3, 1, 1).repeat(len(squares), 1, SIDE, SIDE)
    for i, (x, y) in enumerate(squares):
        images[i, :, y : y + SQUARE, x : x + SQUARE] = torch.tensor(RED).view(3, 1, 1)
    return images


def square_mask(i: int, squares=SQUARES) -> np.ndarray:
    """(SIDE, SIDE) bool: the pixels of image i's red square."""
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    x, y = squares[i]
    mask[y : y + SQUARE, x : x + SQUARE] = True
    return mask


def layer_output(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    out = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, o: out.setdefault("o", o.detach().clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return out["o"]


def top_rows(model: nn.Module, layer: str, images: torch.Tensor, units, k: int | None = None) -> Targets:
    """Each unit's k top images (all by default) at its peak, as the recorder finds them (first maximum)."""
    flat = layer_output(model, layer, images).flatten(2)
    act, pos = flat.amax(dim=2), flat.argmax(dim=2)
    width = layer_output(model, layer, images[:1]).shape[-1]
    image, unit, position = [], [], []
    for u in units:
        for i in torch.argsort(act[:, u], descending=True, stable=True)[: k or len(images)].tolist():
            image.append(i)
            unit.append(u)
            position.append(int(pos[i, u]))
    return Targets.from_positions(image, unit, position, width)
