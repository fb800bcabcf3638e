"""Run `actindex index` and report the process's own peak RSS and CPU time on stderr (for the benchmarks).

    python -m actindex.jobs.bench.child PHOTOS/ --out idx/ ...    # same options as `actindex index`

The last stderr line is `actindex-process peak_rss_kib=N cpu_seconds=S`: S is this process's user + system
time from /proc/self/stat, children excluded (Ray's own processes and the workers are not counted), so
it is the driver's share of the work.
"""

from __future__ import annotations

import re
import resource
import sys


def parse_report(stderr: str) -> dict:
    """{"peak_rss_mib", "cpu_seconds"} from a child's stderr."""
    match = re.findall(r"actindex-process peak_rss_kib=(\d+) cpu_seconds=([0-9.]+)", stderr)
    if not match:
        raise RuntimeError(f"the index process printed no report:\n{stderr[-2000:]}")
    rss, cpu = match[-1]
    return {"peak_rss_mib": int(rss) / 1024, "cpu_seconds": float(cpu)}


def main() -> None:
    from actindex.jobs.cli import app
    from actindex.jobs.index import own_cpu_seconds

    try:
        app(["index", *sys.argv[1:]], prog_name="actindex")
    finally:
        # ru_maxrss is in KiB on Linux
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"actindex-process peak_rss_kib={rss} cpu_seconds={own_cpu_seconds():.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
