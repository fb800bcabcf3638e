"""Benchmark (not a test): pixel projections, occlusion maps and channel contributions for ResNet-50 (random
weights) layer4 (2,048 units) from layer3, k = 9 top images per unit, 224 px, on this CPU, against Captum's
NeuronGuidedBackprop called once per unit with its 9 images and a callable selecting each image's peak.

    python -m bench.attribution_speed                  # about 3 minutes on 2 idle threads
    python -m bench.attribution_speed --units 2 --rounds 1 --occlusion-maps 1   # a quicker, noisier look

A sample of units is timed and the per-unit rate extrapolated to all 2,048. Two cases of top images:
  distinct  every unit has its own 9 images (no image is the top image of two units): the worst case
  shared    each unit's 9 top images are the best of a pool of --pool images (as in a small index, where the
            same images top many units): each image is forwarded once for all its units
Every measurement runs once per round, Captum and ours in alternating order, and the table shows each one's
fastest round (wall) and its least CPU time: on a machine shared with other work, the round that other work
disturbed least. OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set), so CPU seconds count
work rather than spinning at barriers while the other thread is descheduled.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from collections.abc import Callable
from functools import partial

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from actindex.pipeline.attribution.contributions import contributions  # noqa: E402
from actindex.pipeline.attribution.occlusion import occlusion  # noqa: E402
from actindex.pipeline.attribution.prepare import prepare  # noqa: E402
from actindex.pipeline.attribution.projection import project  # noqa: E402
from actindex.pipeline.attribution.targets import Targets  # noqa: E402

LAYER, SOURCE, UNITS = "layer4", "layer3", 2048
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def synthetic_images(count: int, side: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields with a few flat rectangles, normalized as ImageNet models expect."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 3, side // 16, side // 16, generator=generator)
    pixels = torch.nn.functional.interpolate(base, size=(side, side), mode="bicubic").clamp(0, 1)
    for i in range(count):
        for _ in range(3):
            x, y, w, h = torch.randint(0, side - 40, (2,), generator=generator).tolist() + [40, 30]
            pixels[i, :, y : y + h, x : x + w] = torch.rand(3, 1, 1, generator=generator)
    return (pixels - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)


def layer_maps(model: torch.nn.Module, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    out = []
    handle = model.get_submodule(LAYER).register_forward_hook(lambda _m, _i, o: out.append(o.clone()))
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])
    handle.remove()
    return torch.cat(out)


def distinct_case(model, units: np.ndarray, k: int, side: int) -> tuple[torch.Tensor, Targets]:
    """Unit i's top images are images i*k .. i*k+k-1, each at the unit's peak there."""
    images = synthetic_images(len(units) * k, side, seed=1)
    maps = layer_maps(model, images)
    flat = maps.flatten(2)
    image = np.arange(len(units) * k)
    unit = np.repeat(units, k)
    pos = flat.argmax(dim=2)[torch.as_tensor(image), torch.as_tensor(unit)].numpy()
    return images, Targets.from_positions(image, unit, pos, width=maps.shape[-1])


def shared_case(model, units: np.ndarray, k: int, side: int, pool: int) -> tuple[torch.Tensor, Targets]:
    """Each unit's k best images of the pool, at their peaks."""
    images = synthetic_images(pool, side, seed=2)
    maps = layer_maps(model, images)
    flat = maps.flatten(2)
    peak, pos = flat.amax(dim=2), flat.argmax(dim=2)
    image = np.concatenate([torch.argsort(peak[:, u], descending=True)[:k].numpy() for u in units])
    unit = np.repeat(units, k)
    return images, Targets.from_positions(image, unit, pos[image, unit].numpy(), width=maps.shape[-1])


def timed(function: Callable) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def captum_per_unit(model, images, targets: Targets, units) -> tuple[float, float]:
    """Summed (wall, cpu) of one NeuronGuidedBackprop call per unit, its k images, a callable selector."""
    from captum.attr import NeuronGuidedBackprop

    attribution = NeuronGuidedBackprop(model, model.get_submodule(LAYER))
    wall = cpu = 0.0
    for unit in units:
        rows = np.flatnonzero(targets.unit == unit)
        x = images[torch.as_tensor(targets.image[rows])].clone()
        ys, xs = torch.as_tensor(targets.y[rows]), torch.as_tensor(targets.x[rows])

        def selector(out, unit=int(unit), ys=ys, xs=xs):
            return out[torch.arange(out.shape[0]), unit, ys, xs]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Setting backward hooks on ReLU activations", once per call
            w, c = timed(lambda x=x, selector=selector: attribution.attribute(x, neuron_selector=selector))
        wall, cpu = wall + w, cpu + c
    return wall, cpu


class Rounds:
    """Each measurement's (wall, cpu) per round; the table keeps the fastest wall and the least cpu."""

    def __init__(self):
        self.times: dict[str, list[tuple[float, float]]] = {}
        self.meta: dict[str, tuple[str, int, str, str | None]] = {}

    def run(self, key: str, case: str, items: int, per: str, function: Callable, baseline: str | None = None):
        self.meta[key] = (case, items, per, baseline)
        self.times.setdefault(key, []).append(timed(function))

    def best(self, key: str) -> tuple[float, float]:
        return min(w for w, _ in self.times[key]), min(c for _, c in self.times[key])

    def print(self) -> None:
        header = (
            "measure",
            "case",
            "timed",
            "wall s",
            "cpu s",
            "wall s/item",
            "items/s",
            "vs Captum: wall, cpu",
        )
        rows = [header]
        for key, (case, items, per, baseline) in self.meta.items():
            wall, cpu = self.best(key)
            versus = ""
            if baseline:
                base_wall, base_cpu = self.best(baseline)
                versus = f"{base_wall / wall:.2f}x, {base_cpu / cpu:.2f}x"
            rows.append((key, case, f"{items} {per}", f"{wall:.1f}", f"{cpu:.1f}", f"{wall / items:.2f}",
                         f"{items / wall:.2f}", versus))  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        rows.insert(1, tuple("-" * width for width in widths))
        for row in rows:
            print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=4, help="units sampled from layer4's 2,048")
    parser.add_argument("--k", type=int, default=9, help="top images per unit")
    parser.add_argument("--side", type=int, default=224, help="model input side, px")
    parser.add_argument("--pool", type=int, default=12, help="images the shared case picks top images from")
    parser.add_argument("--occlusion-maps", type=int, default=2, help="maps timed in the distinct case")
    parser.add_argument("--rounds", type=int, default=2, help="each measurement's repetitions")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.pool < args.k:
        parser.error(f"--pool ({args.pool}) must hold at least --k ({args.k}) images")
    return args


def subset(targets: Targets, keep: np.ndarray) -> Targets:
    return Targets(targets.image[keep], targets.unit[keep], targets.y[keep], targets.x[keep])


def projection_round(measures: Rounds, models: tuple, case: str, images, rows: Targets, units, first: bool):
    """Guided against Captum (and, with distinct images, the other methods), Captum `first` or last."""
    model, fast = models
    captum = f"Captum NeuronGuidedBackprop, 1 call/unit ({case})"
    ours = {f"guided, prepared model ({case})": lambda: project(fast, LAYER, images, rows)}
    if case == "distinct":
        ours["guided, model as given"] = lambda: project(model, LAYER, images, rows)
        ours["Captum on the prepared model"] = lambda: captum_per_unit(fast, images, rows, units)
        ours["deconvnet, prepared model"] = lambda: project(fast, LAYER, images, rows, "deconvnet")
        ours["gradient, prepared model"] = lambda: project(fast, LAYER, images, rows, "gradient")
    if first:
        measures.run(captum, case, len(units), "units", lambda: captum_per_unit(model, images, rows, units))
    for key, function in ours.items():
        measures.run(key, case, len(units), "units", function, captum)
    if not first:
        measures.run(captum, case, len(units), "units", lambda: captum_per_unit(model, images, rows, units))


def other_round(
    measures: Rounds, fast, case: str, images, rows: Targets, units, maps: int, side: int
) -> None:
    """Occlusion maps of some rows and contributions of all units."""
    # distinct: the first rows; shared: every row on the first row's image, which share their windows
    some = subset(rows, np.arange(maps) if case == "distinct" else rows.image == rows.image[0])
    boxes = np.tile([0, 0, side, side], (len(some), 1))  # layer4's receptive field covers the whole input
    occlude = partial(occlusion, fast, LAYER, images, some, boxes)
    measures.run(f"occlusion, {math.ceil(side / 4)} px windows ({case})", case, len(some), "maps", occlude)
    explain = partial(contributions, fast, LAYER, SOURCE, images, rows)
    measures.run(f"contributions layer4 <- layer3 ({case})", case, len(units), "units", explain)


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    model = torchvision.models.resnet50().eval()
    fast = prepare(model, keep=[LAYER, SOURCE])
    units = np.sort(np.random.default_rng(0).choice(UNITS, args.units, replace=False))
    cases = {
        "distinct": distinct_case(fast, units, args.k, args.side),
        "shared": shared_case(fast, units, args.k, args.side, args.pool),
    }
    measures = Rounds()
    for round_ in range(args.rounds):
        for case, (images, rows) in cases.items():
            projection_round(measures, (model, fast), case, images, rows, units, first=round_ % 2 == 0)
            other_round(measures, fast, case, images, rows, units, args.occlusion_maps, args.side)
    print(
        f"ResNet-50 (random weights) {LAYER} ({UNITS} units), k = {args.k}, {args.side} px,"
        f" {len(units)} units sampled, best of {args.rounds} rounds; torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']};"
        f" load average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    measures.print()
    for key, (_, items, per, _) in measures.meta.items():
        if per == "units" and ("Captum" in key or "guided, prepared" in key):
            print(f"  all {UNITS} units, {key}: {UNITS * measures.best(key)[0] / items / 3600:.1f} h")
    window = math.ceil(args.side / 4)
    print(
        f"occlusion: {window} px windows every {window // 2} px over the whole input, 49 windows + 1 baseline"
        " = 50 forward passes per (image, box); rows on one image with one box share them"
    )


if __name__ == "__main__":
    main()
