"""Benchmark: `modelchip plan` over at least 10,000 candidate deployments (issue 5: under 2 s).

Runs the whole command as a user does (interpreter start, imports, search, HTML report) on DeepSeek-V3 over
9 chips x 15 chip counts x 3 strategies (4 attention/FFN splits) x the batch grid. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

CHIPS = ["h800", "h20", "a800", "h100", "h200", "b200", "gb200", "ascend-910b", "ascend-910c"]
COUNTS = ["8", "16", "24", "32", "48", "64", "72", "96", "128", "144", "192", "256", "288", "384", "512"]


def main() -> None:
    times, evaluated = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(5):
            start = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "modelchip", "plan", "--model", "deepseek-v3", "--chip", *CHIPS,
                                "--counts", *COUNTS, "--redundant-experts", "32", "--tpot-slo-ms", "100",
                                "--out", os.path.join(tmp, "plan.html"), "--json"],
                               check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            evaluated = json.loads(p.stdout)["evaluated"]
            print(f"run {i + 1}/5: {times[-1]:.3f} s, {evaluated} evaluated", file=sys.stderr)
    print(json.dumps({
        "benchmark": "plan-deepseek-v3", "evaluated": evaluated, "median_s": round(statistics.median(times), 3),
        "target_s": 2.0, "ratio_to_target": round(statistics.median(times) / 2.0, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
