"""`modelchip validate`: predict every published measured deployment and show the error."""

from __future__ import annotations

from pathlib import Path

from modelchip.cli import common
from modelchip.cost import validation

HEADER = """# Validation: predictions against published measured deployments

Written by `modelchip validate --write docs/validation.md`. Each row is a measured result from
`src/modelchip/spec/catalog/deployments.toml` (sources in the reference deployments.md), predicted from its
setup by `modelchip predict`'s step-time model with default efficiencies. Nothing in the model is fitted to
these points; setup figures a source leaves out are listed as assumed.

"""

NOTES = """

## Where the misses come from

- TensorRT-LLM points with short requests (128/128, 2048/128) and the v0.5 fixed-batch TP4 point are
  predicted too fast. The model has no per-step fixed costs (kernel launches, scheduling, sampling,
  all-reduce latency), which dominate when a step carries little work per chip, and it assumes the engine
  runs at the largest batch memory allows. A measured per-op overhead from `modelchip calibrate` is the
  missing mechanism.
- DeepSeek's online decode and prefill figures are service averages (varying load, on-disk cache hits in
  prefill), so a steady-state model reads high on them.
- Decode is predicted without compute/communication overlap (`--overlap` models ideal two-micro-batch
  overlap); with it the decode points come out 1.6-2x too fast, so the published systems hide much less than
  the ideal.
"""


def register(sub) -> None:
    p = sub.add_parser("validate", help="predict the published measured deployments and show the error table")
    p.add_argument("--write", metavar="FILE.md", help="write the table as Markdown (e.g. docs/validation.md)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    result = validation.run()
    if args.json:
        common.print_json(result)
    else:
        print(validation.markdown(result))
    if args.write:
        Path(args.write).write_text(HEADER + validation.markdown(result) + NOTES)
    return 0
