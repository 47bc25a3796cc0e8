"""`modelchip conformance`: check a backend's ops and model families against float64 math and the reference."""

from __future__ import annotations

import sys
from pathlib import Path

from modelchip.cli import common
from modelchip.errors import ModelchipError


def register(sub) -> None:
    p = sub.add_parser("conformance", help="check a backend against the contract: ops, model families, fallbacks",
                       description="Run every contract op on a grid of shapes and dtypes against float64 math, "
                                   "and every model family end to end against the reference backend, then print "
                                   "a conformance card. Exit status 1 when any check fails. "
                                   "Example: modelchip conformance --backend compile --dtype float32 bfloat16")
    p.add_argument("--backend", required=True, help="backend name (built-in or a modelchip.backends entry point)")
    p.add_argument("--device", default="cpu", help="torch device for the backend (default cpu)")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16", "float16"], metavar="D",
                   help="activation dtypes to check (default: float32 bfloat16 float16)")
    p.add_argument("--ops", nargs="+", metavar="OP", help="only these contract ops (default: all; 'none' for model "
                                                                "and parallel checks only)")
    p.add_argument("--families", nargs="+", metavar="F", help="only these model families (default: all; "
                                                               "'none' for ops only)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                   help="also check that every family over N tensor-parallel ranks, on this backend, device and "
                        "its collectives, equals one process (default 1: skip)")
    p.add_argument("--expert-parallel-size", type=int, default=1, metavar="M",
                   help="also check the MoE families over M expert-parallel ranks (attention replicated) and "
                        "over M data-parallel attention + expert-parallel ranks against one process (default 1: skip)")
    p.add_argument("--afd", nargs=2, type=int, metavar=("A", "F"),
                   help="also check that every family under attention-FFN disaggregation (Step-3's AFD: A "
                        "attention ranks and F FFN ranks exchanging activations every layer by send/recv, on this "
                        "backend, device and its communicator) equals one process")
    p.add_argument("--afd-micro-batches", type=int, metavar="M",
                   help="with --afd: split each step's sequences into M micro-batches that pipeline (default 2; "
                        "the check runs at least M sequences, so every micro-batch is exercised)")
    p.add_argument("--accuracy", nargs="?", const="smollm2-135m", default=None, metavar="MODEL",
                   help="also run the accuracy step: the kit's lm-eval tasks on MODEL (default smollm2-135m) on "
                        "this backend and on the reference, in each dtype (needs lm-eval[api])")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the card")
    p.add_argument("--card", type=Path, metavar="FILE.md", help="also write the card (Markdown) to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelchip.conformance import markdown
    from modelchip.conformance import run as check

    families = [] if args.families == ["none"] else args.families
    ops = [] if args.ops == ["none"] else args.ops
    if args.afd_micro_batches is not None and args.afd is None:
        raise ModelchipError("--afd-micro-batches sets the micro-batches of the --afd check; give --afd A F too")
    micro = {} if args.afd_micro_batches is None else {"afd_micro_batches": args.afd_micro_batches}
    report = check(args.backend, args.device, args.dtype, ops, families, args.tensor_parallel_size,
                   args.accuracy, args.expert_parallel_size, tuple(args.afd) if args.afd else None, **micro)
    card = markdown(report)
    if args.card:
        args.card.write_text(card)
    if args.json:
        common.print_json(report.to_json())
    else:
        print(card, end="")
    if report.failures:
        print(f"modelchip conformance: {len(report.failures)} check(s) failed for backend {report.backend!r} "
              f"on {report.device}:", file=sys.stderr)
        for line in report.failures:
            print(f"  FAIL {line}", file=sys.stderr)
        return 1
    print(f"modelchip conformance: backend {report.backend!r} on {report.device} passed "
          f"{len(report.ops) + len(report.families)} checks in {report.seconds:.1f} s", file=sys.stderr)
    return 0
