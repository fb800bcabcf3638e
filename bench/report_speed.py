"""How fast `actindex report` draws, old code against this checkout, with masks and without.

    python -m bench.report_speed --old /tmp/actindex-f692741 --work /tmp/report-speed    # table on stdout

Both run the same command (`python -m actindex report INDEX --out SITE --mask M --no-progress`) as a
subprocess, from the old checkout's root (its code imports from there) and with this checkout's src/ on
PYTHONPATH: wall-clock time of the whole command, model load and imports included. The runs alternate
(old, new, for each mask, `--runs` times), so that a change in the machine's load falls on both; the table
gives each one's median and the crops per second it makes. The sites of the last runs are compared file
for file (bench.compare_sites): the new one must be the old one. The index is the demo's (EfficientNet-Lite0
over scikit-image's photos, layers blocks.3 and classifier: 1,080 units, 9,720 crops at k=9), made in
WORK/index unless --index names one. The load average is printed before and after: measure on a quiet
machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.compare_sites import compare_sites

HERE = Path(__file__).resolve().parent.parent  # this checkout
MASKS = ("highlight", "none")
ONE_THREAD = "new, 1 thread"  # --scaling: how far the new code's threads share the cores (the GIL)


def build_index(work: Path) -> Path:
    """The demo's index (as `actindex demo` makes it), once."""
    index = work / "index"
    if not (index / "run.json").exists():
        from actindex.jobs.demo import copy_demo_photos
        from actindex.jobs.indexing import run_index
        from actindex.jobs.spec import IndexRequest

        copy_demo_photos(work / "photos")
        request = IndexRequest(
            source=str(work / "photos"), out=str(index), model="efficientnet_lite0",
            layers=("blocks.3", "classifier"), k=9, executor="local", progress=False,
        )  # fmt: skip
        run_index(request)
    return index


def run_report(
    code: str, old: Path, index: Path, site: Path, mask: str, workers: int | None
) -> tuple[float, int]:
    """(seconds, crops) of one report, `code` "old" or "new"."""
    command = [sys.executable, "-m", "actindex", "report", str(index), "--out", str(site), "--mask", mask]
    command += ["--no-progress", *(["--workers", str(workers)] if workers else [])]
    if code != "old":
        command.append("--no-projections")  # drawn by default since: the same work as the old code
    env = dict(os.environ, PYTHONPATH="" if code == "old" else str(HERE / "src"))
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=old if code == "old" else HERE, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{code} report failed: {done.stderr[-2000:]}")
    crops = int(re.search(r"([\d,]+) crops in", done.stdout).group(1).replace(",", ""))
    return seconds, crops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--work", type=Path, required=True, help="folder for the index and the sites")
    parser.add_argument("--index", type=Path, help="an index to report (default: the demo's, made in WORK)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--scaling", action="store_true", help=f"also run the new code on one thread ({ONE_THREAD})"
    )
    args = parser.parse_args(argv)
    codes = ("old", "new", ONE_THREAD) if args.scaling else ("old", "new")
    index = args.index or build_index(args.work)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    times: dict[tuple[str, str], list[float]] = {}
    crops: dict[str, int] = {}
    for run in range(args.runs):
        for mask in MASKS:
            for code in codes:
                site = (
                    args.work / f"site-{code.replace(', ', '-').replace(' ', '')}-{mask}"
                )  # replaced each run
                workers = 1 if code == ONE_THREAD else None
                seconds, crops[mask] = run_report(code, args.old, index, site, mask, workers)
                times.setdefault((code, mask), []).append(seconds)
                print(f"run {run + 1}: {code} --mask {mask}: {seconds:.1f} s", file=sys.stderr, flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| code | --mask | crops | runs (s) | median (s) | crops/s | speed-up |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for mask in MASKS:
        old_median = statistics.median(times["old", mask])
        for code in codes:
            runs = times[code, mask]
            median = statistics.median(runs)
            listed = ", ".join(f"{t:.1f}" for t in runs)
            rate, gain = crops[mask] / median, old_median / median
            print(
                f"| {code} | {mask} | {crops[mask]:,} | {listed} | {median:.1f} | {rate:.0f} | {gain:.2f}x |"
            )
    same = True
    for mask in MASKS:
        result = compare_sites(args.work / f"site-old-{mask}", args.work / f"site-new-{mask}")
        print(f"\n--mask {mask}, old site against new: {result.summary()}")
        same = same and result.identical
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
