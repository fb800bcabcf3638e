"""Pixel error of the fast decode against torchvision's pipeline (`--decode fast` vs `--decode torchvision`).

    python -m bench.decode_error --out /tmp/decode_error                 # the photo sets below
    python -m bench.decode_error --out /tmp/decode_error --source PHOTOS/ # your own images too

Both decoders turn every image into the model input (uint8, crop x crop) with the same resize and crop;
the table gives, per set and interpolation, the images the fast path drafted (decoded at reduced scale in
the DCT), and the max and mean absolute difference in grey levels (0-255) over the drafted images' pixels
(the others decode to the same pixels: the table checks that too). EXIF-rotated images are counted apart:
the fast path rotates them upright and torchvision does not, so their pixels are not comparable.

The sets, all built here from scikit-image's real photos (no download):
  photos        the photos as shipped (300-1000 px: too small to be drafted at resize 256)
  upscaled x4   each photo resized 4x (Lanczos) and saved as a JPEG (quality 90): 1,200-4,000 px, smooth
  mosaics       3x3 and 4x4 tilings of the photos (those of 370+ px) at their own resolution, JPEG quality
                90: 1,110-1,500 px
                with real pixel-level detail and sharp tile edges, the closest to a large camera photo
  synthetic     ImageNet-like synthetic photos (pipeline.synthetic) at 2,000-4,000 px, JPEG quality 90
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from actindex.pipeline.decode import Decoder, _orientation
from actindex.pipeline.preprocess import Preprocessing
from actindex.pipeline.synthetic import synthetic_photo


def make_sets(folder: Path) -> dict[str, list[Path]]:
    """{set name: image files} written under `folder` (see the module docstring)."""
    from actindex.jobs.demo import copy_demo_photos

    photos = sorted(copy_demo_photos(folder / "photos"))
    sets = {"photos": photos, "upscaled x4": [], "mosaics": [], "synthetic": []}
    for path in photos:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        out = folder / "upscaled" / f"{path.stem}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        rgb.resize((rgb.width * 4, rgb.height * 4), Image.Resampling.LANCZOS).save(out, quality=90)
        sets["upscaled x4"].append(out)
    rng = np.random.default_rng(0)
    big = [p for p in photos if min(Image.open(p).size) >= 370]  # 370-1000 px: cells of 370+
    for i in range(8):
        side = 3 if i % 2 == 0 else 4
        tiles = [Image.open(big[j]).convert("RGB") for j in rng.choice(len(big), side * side)]
        cell = min(min(t.size) for t in tiles)
        mosaic = Image.new("RGB", (side * cell, side * cell))
        for j, tile in enumerate(tiles):
            left, top = (tile.width - cell) // 2, (tile.height - cell) // 2
            mosaic.paste(
                tile.crop((left, top, left + cell, top + cell)), ((j % side) * cell, (j // side) * cell)
            )
        out = folder / "mosaics" / f"mosaic{i}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        mosaic.save(out, quality=90)
        sets["mosaics"].append(out)
    for i, (width, height) in enumerate([(2000, 1500), (3000, 2000), (4000, 3000), (2448, 3264)]):
        out = folder / "synthetic" / f"synthetic{i}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(i, width, height).save(out, quality=90)
        sets["synthetic"].append(out)
    return sets


def compare(files: list[Path], prep: Preprocessing) -> dict:
    """Fast against torchvision decoding of `files` under `prep` (its interpolation, resize and crop)."""
    fast = Decoder(Preprocessing(**{**prep.to_dict(), "decode": "fast"}))
    exact = Decoder(Preprocessing(**{**prep.to_dict(), "decode": "torchvision"}))
    drafted, rotated, identical, diffs = 0, 0, 0, []
    for path in files:
        with Image.open(path) as img:
            if _orientation(img) not in (0, 1):
                rotated += 1
                continue
        a, b = fast(str(path)), exact(str(path))
        if a.error or b.error:
            continue
        diff = np.abs(a.pixels.astype(np.int16) - b.pixels.astype(np.int16))
        if _is_drafted(fast, path):
            drafted += 1
            diffs.append(diff.ravel())
        else:
            identical += int(not diff.any())
    pixels = np.concatenate(diffs) if diffs else np.zeros(1, dtype=np.int16)
    return {
        "images": len(files),
        "drafted": drafted,
        "exif_rotated": rotated,
        "not_drafted_identical": f"{identical}/{len(files) - drafted - rotated}",
        "max": int(pixels.max()),
        "mean": float(pixels.mean()),
        "p99": float(np.percentile(pixels, 99)),
    }


def _is_drafted(decoder: Decoder, path: Path) -> bool:
    with Image.open(path) as img:
        width, height = img.size
        return decoder._draft(img, width, height) is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_error", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="working folder for the generated images")
    parser.add_argument("--source", default=None, help="also measure the images in this folder")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    args = parser.parse_args(argv)
    sets = make_sets(Path(args.out))
    if args.source:
        sets["source"] = sorted(p for p in Path(args.source).rglob("*") if p.is_file())
    results = {}
    print(f"{'set':<14} {'interp':<9} {'images':>6} {'drafted':>7} {'rotated':>7} {'same':>7} "
          f"{'max':>4} {'mean':>6} {'p99':>4}")  # fmt: skip
    for name, files in sets.items():
        for interpolation in ("bilinear", "bicubic"):
            prep = Preprocessing(args.resize, args.crop, interpolation)
            r = results[f"{name}/{interpolation}"] = compare(files, prep)
            print(
                f"{name:<14} {interpolation:<9} {r['images']:>6} {r['drafted']:>7} {r['exif_rotated']:>7} "
                f"{r['not_drafted_identical']:>7} {r['max']:>4} {r['mean']:>6.2f} {r['p99']:>4.0f}"
            )
    (Path(args.out) / "decode_error.json").write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}/decode_error.json", file=sys.stderr)


if __name__ == "__main__":
    main()
