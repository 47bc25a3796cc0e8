"""Conformance kit: does a backend compute what the contract says, on its device, in each dtype?

    from modelchip.conformance import run, markdown
    report = run("mychip", device="npu:0", dtypes=["float32", "bfloat16"])
    report.passed, report.failures          # failures name the op, shape, dtype and error
    print(markdown(report))                 # the conformance card

Command line: `modelchip conformance --backend NAME [--device D] [--dtype ...] [--json] [--card FILE.md]`.
How tolerances are chosen: modelchip.conformance.tolerances; the op grid: op_cases; model runs: drive.
"""

from modelchip.conformance.card import markdown
from modelchip.conformance.runner import Report, run

__all__ = ["Report", "markdown", "run"]
