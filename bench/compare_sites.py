"""Two report sites compared: is the new one the old one, file for file?

    python -m bench.compare_sites OLD_SITE/ NEW_SITE/     # exit 0 when the same; prints what differs

Every file of the old site must be in the new one. Images (.webp, .png) must have the same pixels (the same
bytes, or the same pixels where the encoders differ); every other file the same text once the times the
sites were made are blanked (the footer's "made ...", report.json's "made"). Files only the new site has
are listed, not counted as differences.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES = {".webp", ".png", ".jpg", ".jpeg"}
MADE = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d)?(\+00:00| UTC)?")  # when a site was made


@dataclass
class Comparison:
    files: int = 0  # files of the old site
    same_bytes: int = 0
    same_pixels: int = 0  # images whose bytes differ but whose pixels do not
    same_text: int = 0  # other files equal once the times they were made are blanked
    missing: list[str] = field(default_factory=list)  # in the old site, not in the new
    different: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # in the new site only

    @property
    def identical(self) -> bool:
        return not self.missing and not self.different

    def summary(self) -> str:
        verdict = "identical" if self.identical else "DIFFERENT"
        return (
            f"{verdict}: {self.files} files; {self.same_bytes} the same bytes, {self.same_pixels} images the "
            f"same pixels in other bytes, {self.same_text} the same text but for when they were made; "
            f"{len(self.missing)} missing, {len(self.different)} different, {len(self.extra)} only in the new"
        )


def compare_sites(old: Path, new: Path) -> Comparison:
    result = Comparison()
    old_files = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file())
    new_files = {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    result.extra = sorted(str(p) for p in new_files - set(old_files))
    for name in old_files:
        result.files += 1
        a, b = old / name, new / name
        if name not in new_files:
            result.missing.append(str(name))
        elif a.read_bytes() == b.read_bytes():
            result.same_bytes += 1
        elif (
            name.suffix.lower() in IMAGES
            and _pixels(a).shape == _pixels(b).shape
            and np.array_equal(_pixels(a), _pixels(b))
        ):
            result.same_pixels += 1
        elif name.suffix.lower() not in IMAGES and _undated(a) == _undated(b):
            result.same_text += 1
        else:
            result.different.append(str(name))
    return result


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def _undated(path: Path) -> str:
    return MADE.sub("<made>", path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    result = compare_sites(args.old, args.new)
    print(result.summary())
    for kind in ("missing", "different"):
        for name in getattr(result, kind)[:20]:
            print(f"  {kind}: {name}")
    return 0 if result.identical else 1


if __name__ == "__main__":
    sys.exit(main())
