"""`modelchip compare`: the Step-3 paper's per-token accounting and decode cost, for any models and chips."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from modelchip.cli import common
from modelchip.cost import compare
from modelchip.report import compare_html
from modelchip.report.text import render, sci, usd
from modelchip.spec.chips import parse_prices

DEFAULT_REPORT = "modelchip-compare.html"


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="per-token KV bytes, FLOPs and decode cost of models on chips (default: the Step-3 paper's setting)",
        description="Per decoded token: KV/state bytes read (A), attention-core FLOPs (B), linear FLOPs (C), FFN "
                    "FLOPs (D), and the paper's cost in USD per 1M tokens for attention and FFN on each chip, with "
                    "the cheapest attention-FFN split. Defaults reproduce the Step-3 paper's Tables 2, 3 and 6.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=list(compare.PAPER_MODELS), metavar="MODEL",
                   help="preset ids, config.json paths, checkpoint dirs or hub ids; MODEL:key=value,... for a what-if")
    p.add_argument("--chips", nargs="+", default=list(compare.PAPER_CHIPS), metavar="CHIP",
                   help="chip ids (see `modelchip chips`)")
    p.add_argument("--context", nargs="+", default=["8K", "32K"], metavar="N",
                   help="context lengths in tokens (8192, 8K, 1M)")
    p.add_argument("--phase", default="decode", choices=["decode", "prefill"],
                   help="decode: per token at context N; prefill: per token of an N-token prompt")
    common.add_precision(p)
    common.add_sets(p)
    p.add_argument("--price", action="append", default=[], metavar="CHIP=USD",
                   help="override a chip's hourly price (repeatable)")
    p.add_argument("--profile", action="append", default=[], metavar="PROFILE.json",
                   help="add a chip profile measured by `modelchip calibrate` (repeatable)")
    p.add_argument("--out", default=None, metavar="FILE.html",
                   help=f"where to write the HTML report (default {DEFAULT_REPORT}; with --json only if given)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def _setting(args) -> compare.Setting:
    return compare.Setting(
        models=tuple(args.models),
        chips=tuple(args.chips),
        contexts=tuple(compare.parse_context(c) for c in args.context),
        precision=common.precision(args),
        convention=common.counting(args),
        sets=tuple(args.sets),
        prices=parse_prices(args.price),
        phase=args.phase,
        profiles=tuple(args.profile),
    )


def run(args) -> int:
    start = time.perf_counter()
    result = compare.run(_setting(args))
    out = None
    if not args.no_report and (args.out or not args.json):
        out = Path(args.out or DEFAULT_REPORT)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(compare_html.render(result))
        result["report"] = str(out.resolve())
    if args.json:
        common.print_json(result)
        return 0
    print(tables(result))
    for cid, c in result["chips"].items():
        if "unpriced" in c:
            print(f"note: {cid} left out of the cost tables: {c['unpriced']}")
    if out:
        print(f"\nReport: {out.resolve()}  ({time.perf_counter() - start:.2f} s)")
    return 0


def tables(result: dict) -> str:
    priced = [c for c, v in result["chips"].items() if "usd_per_flop" in v]
    s = result["settings"]
    blocks = []
    for ctx in s["contexts"]:
        rows = [r for r in result["rows"] if r["context"] == ctx]
        blocks.append(render(
            ["model", "A kv bytes", "B attn FLOPs", "C linear", "D FFN", "B/A"],
            [[r["model"], sci(r["kv_bytes"]), sci(r["attention_flops"]), sci(r["linear_flops"]),
              sci(r["ffn_flops"]), f"{r['arithmetic_intensity']:.0f}"] for r in rows],
            title=f"Per decoded token at context {ctx} ({s['phase']}; weights {s['weight_dtype']}, "
                  f"KV {s['kv_dtype']}, convention {s['convention']})",
        ))
        blocks.append(render(
            ["model", *(f"attn {c}" for c in priced), *(f"FFN {c}" for c in priced), "best split", "total"],
            [[r["model"], *(usd(r["cost"][c]["attention"]) for c in priced),
              *(usd(r["cost"][c]["ffn"]) for c in priced),
              f"{r['best']['attention_chip']} + {r['best']['ffn_chip']}" if r["best"] else "-",
              usd(r["best"]["total"] if r["best"] else None)] for r in rows],
            title=f"USD per 1M decoded tokens at context {ctx}",
        ))
    return "\n\n".join(blocks)
