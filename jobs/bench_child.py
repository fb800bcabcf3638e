"""Run `actindex index` and report the process's peak RSS on stderr (for `actindex bench`).

python -m jobs.bench_child PHOTOS/ --out idx/ ...    # same options as `actindex index`
"""

from __future__ import annotations

import resource
import sys


def main() -> None:
    from jobs.cli import app

    try:
        app(["index", *sys.argv[1:]])
    finally:
        # ru_maxrss is in KiB on Linux
        print(f"peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)


if __name__ == "__main__":
    main()
