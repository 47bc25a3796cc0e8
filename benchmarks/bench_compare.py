"""Benchmark: `modelchip compare` with its defaults (the Step-3 paper's 9 models x 4 chips x 2 contexts).

Target (issue 2): under 3 s on the project's 2-core machine, wall clock, for the whole command as a user runs
it (interpreter start, imports, tables and the HTML report). Prints one JSON line; record it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "modelchip", "compare", "--out", os.path.join(tmp, "r.html")],
                           check=True, capture_output=True)
            times.append(time.perf_counter() - start)
            print(f"run {i + 1}/{args.repeat}: {times[-1]:.3f} s", file=sys.stderr)
    print(json.dumps({
        "benchmark": "compare-defaults",
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "target_s": 3.0,
        "ratio_to_target": round(statistics.median(times) / 3.0, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
