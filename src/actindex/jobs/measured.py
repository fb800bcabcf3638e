"""Run `actindex index` and report the process's own peak RSS and CPU time on stderr (for the benchmarks).

    python -m actindex.jobs.measured PHOTOS/ --out idx/ ...    # same options as `actindex index`

The last stderr line (read by jobs.benchmark.parse_report) is `actindex-process peak_rss_kib=N
cpu_seconds=S`: S is this process's user + system
time from /proc/self/stat, children excluded (Ray's own processes and the workers are not counted), so
it is the driver's share of the work.
"""

from __future__ import annotations

import resource
import sys

from actindex.jobs.cli import app
from actindex.jobs.indexing import own_cpu_seconds


def main() -> None:
    try:
        app(["index", *sys.argv[1:]], prog_name="actindex")
    finally:
        # ru_maxrss is in KiB on Linux
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"actindex-process peak_rss_kib={rss} cpu_seconds={own_cpu_seconds():.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
