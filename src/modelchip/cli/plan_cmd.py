"""`modelchip plan`: search chips, sizes, strategies and batches under latency targets."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from modelchip.cli import common
from modelchip.cli.predict_cmd import add_deployment_args, build
from modelchip.cost import planner
from modelchip.errors import ModelchipError
from modelchip.report import plan_html
from modelchip.report.text import render

DEFAULT_REPORT = "modelchip-plan.html"


def register(sub) -> None:
    p = sub.add_parser("plan", help="search deployments under TPOT/TTFT targets; Pareto frontier and report",
                       description="Evaluates every chip x chip count x strategy (x attention/FFN split) x batch "
                                   "size, keeps those that fit in memory and meet the targets, and reports the "
                                   "best, the throughput-vs-TPOT Pareto frontier and why the others lost.")
    p.add_argument("--chip", nargs="+", default=["h800", "h20", "h100", "ascend-910b"], dest="chip_ids",
                   metavar="CHIP", help="chips to consider")
    p.add_argument("--counts", nargs="+", type=int, default=[8, 16, 32, 64, 128, 256], metavar="N",
                   help="chip counts to consider")
    p.add_argument("--strategies", nargs="+", default=["tp", "ep", "afd"], help="tp, ep, afd")
    p.add_argument("--tpot-slo-ms", type=float, default=50.0, help="TPOT target (default 50 ms)")
    p.add_argument("--ttft-slo-ms", type=float, default=None, help="TTFT target for a --prompt-len prompt")
    p.add_argument("--kv-dtypes", nargs="+", default=["bf16", "fp8"], metavar="D",
                   help="KV cache formats to consider (default bf16 fp8)")
    p.add_argument("--objective", default="throughput", choices=["throughput", "cost"],
                   help="maximise tokens/s per chip, or minimise USD per 1M tokens")
    add_deployment_args(p)
    p.add_argument("--input-len", type=int, default=0, help="--phase serve: prompt tokens per request")
    p.add_argument("--output-len", type=int, default=0, help="--phase serve: output tokens per request")
    p.add_argument("--top", type=int, default=10, help="configurations to list (default 10)")
    p.add_argument("--out", default=None,
                   help=f"HTML report path (default {DEFAULT_REPORT}; with --json only if given)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    if args.profile:  # the search runs on the profiled chip alone
        args.chip_ids = args.chip_ids[:1]
    serve = None
    if args.phase == "serve":
        if args.input_len < 1 or args.output_len < 1:
            raise ModelchipError("plan --phase serve needs positive --input-len and --output-len")
        serve, args.phase = (args.input_len, args.output_len), "decode"
    elif args.phase != "decode":
        raise ModelchipError("plan searches decode steps (--phase decode) or serving loads (--phase serve)")
    cached, args.cached_prefix = args.cached_prefix, 0  # the search is over decode; the prefix applies to TTFT
    if cached and not 0 < cached < args.prompt_len:
        raise ModelchipError(f"--cached-prefix {cached} needs a longer --prompt-len (got {args.prompt_len}): at "
                             "least one prompt token is computed")
    results = []
    for kv in args.kv_dtypes:
        args.kv_dtype = kv
        base, cost = [], None
        for chip in args.chip_ids:
            for n in args.counts:
                for strategy in args.strategies:
                    if strategy == "tp" and n > 16:
                        continue  # tensor parallelism beyond two nodes is not a serving configuration
                    ffn_split = (n // 2, n - n // 2) if strategy == "afd" else (0, 0)
                    cost, d = build(args, chip, n, strategy, 1, *ffn_split, cost=cost)  # one model cost per format
                    base.append(d)
        if cost is None:
            raise ModelchipError("nothing to search: give at least one chip, count and strategy")
        results.append(planner.plan(cost, base, args.tpot_slo_ms, args.ttft_slo_ms, prompt_len=args.prompt_len,
                                    cached_prefix=cached, objective=args.objective, serve=serve))
    result = planner.merge(results, args.objective)
    seconds = time.perf_counter() - start
    out = {
        "model": args.model, "evaluated": result.evaluated, "seconds": seconds,
        "best": asdict(result.best) if result.best else None,
        "pareto": [asdict(c) for c in result.pareto],
        "top": [asdict(c) for c in result.best_per_config[: args.top]],
        "rejected": result.rejected, "rejected_examples": result.examples,
        "targets": {"tpot_ms": args.tpot_slo_ms, "ttft_ms": args.ttft_slo_ms, "objective": args.objective},
        "serve": {"input_len": serve[0], "output_len": serve[1]} if serve else None,
    }
    report = None
    if args.out or not args.json:
        report = Path(args.out or DEFAULT_REPORT)
        report.write_text(plan_html.render(out, result))
        out["report"] = str(report.resolve())
    if args.json:
        common.print_json(out)
        return 0
    rows = [[c.label, c.batch, f"{c.tpot_ms:.1f}", f"{c.tokens_per_s_per_chip:,.0f}",
             "-" if c.usd_per_mtok is None else f"{c.usd_per_mtok:.3f}", f"{c.memory_gb_per_chip:.0f}"]
            for c in result.best_per_config[: args.top]]
    print(render(["deployment", "batch/chip", "TPOT ms", "tok/s/chip", "USD/1M", "GB/chip"], rows,
                 title=f"{args.model}: best {len(rows)} of {result.evaluated:,} evaluated "
                       f"(TPOT <= {args.tpot_slo_ms} ms, {args.objective})"))
    print("\nRejected: " + (", ".join(f"{k} {v:,}" for k, v in result.rejected.items()) or "none"))
    for k, v in result.examples.items():
        print(f"  {k}: e.g. {v}")
    if report:
        print(f"\nReport: {report.resolve()}  ({seconds:.2f} s)")
    return 0
