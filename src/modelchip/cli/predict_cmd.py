"""`modelchip predict`: step time, throughput, memory and price of one deployment."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from modelchip.cli import common
from modelchip.cost import serving
from modelchip.cost.deploy import STRATEGIES, Deployment, best_batch_for_slo, evaluate
from modelchip.cost.efficiency import defaults, parse_overrides
from modelchip.cost.model_cost import ModelCost, model_cost
from modelchip.cost.profile import apply_profile
from modelchip.cost.systems import system_for
from modelchip.errors import ModelchipError
from modelchip.report.text import render
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip


def add_deployment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="preset id, config.json, checkpoint dir or hub id")
    p.add_argument("--system", default=None, help="system id (default: the chip's usual system; see `chips --systems`)")
    p.add_argument("--context", type=int, default=4096, help="KV length per sequence for decode (default 4096)")
    p.add_argument("--phase", default="decode", choices=["decode", "prefill", "serve"],
                   help="decode or prefill: one step; serve: a stream of requests (needs --input-len, --output-len; "
                        "predict only)")
    p.add_argument("--prompt-len", type=int, default=0, help="prompt tokens per sequence (prefill)")
    p.add_argument("--cached-prefix", type=int, default=0, metavar="TOKENS",
                   help="prefill: leading prompt tokens per sequence already in a prefix cache; attention reads "
                        "their KV, nothing computes them, and prefill throughput counts computed tokens only")
    p.add_argument("--weight-dtype", default="fp8", help="fp8 (default), int8, bf16, fp4, q8_0, q4_1, fp8_block ...")
    p.add_argument("--kv-dtype", default="bf16", help="bf16 (default), fp8, ...")
    p.add_argument("--attention-weight-dtype", default="",
                   help="keep attention projections and the LM head in this format (e.g. bf16 beside fp4 experts)")
    p.add_argument("--moe-balance", default="eplb", choices=["eplb", "static", "ideal"],
                   help="expert placement: rebalanced (eplb, default), static, or ideal (even routing, as published "
                        "profiles simulate); the busiest rank's measured excess applies from 32 ranks up")
    p.add_argument("--engine", default="", choices=["", "tensorrt-llm"],
                   help="serving engine whose memory policy applies (tensorrt-llm: the KV cache takes 90%% of the "
                        "memory the weights leave); default: 10%% of the device kept back, as vLLM does")
    p.add_argument("--weight-offload", action="store_true",
                   help="weights that do not fit stay in host memory and stream over the chip's host link each "
                        "forward, prefetched (chips with a host link in the catalog: GB200's NVLink-C2C)")
    p.add_argument("--mtp", type=int, default=0, help="multi-token-prediction draft tokens per step")
    p.add_argument("--mtp-acceptance", type=float, default=0.0, help="acceptance rate of each draft token")
    p.add_argument("--redundant-experts", type=int, default=0, help="extra expert replicas placed for balance")
    p.add_argument("--overlap", action="store_true", help="two micro-batch overlap of EP communication")
    p.add_argument("--microbatches", type=int, default=3, help="AFD pipeline micro-batches (default 3)")
    p.add_argument("--no-graphs", dest="graphs", action="store_false",
                   help="the engine launches every kernel of a step itself instead of replaying a captured graph "
                        "(CUDA graphs, ACL graphs): each op call then pays the chip's catalog launch cost "
                        "(breakdown 'launch'; zero where the catalog has no figure)")
    p.add_argument("--efficiency", action="append", default=[], metavar="NAME=FRACTION",
                   help="override an efficiency default: gemm, attention_compute, memory, scale_up, scale_out")
    p.add_argument("--price", type=float, default=None, help="USD per chip-hour (default: the catalog's)")
    p.add_argument("--profile", default=None, metavar="PROFILE.json",
                   help="a chip profile from `modelchip calibrate`: its measured peaks, bandwidth, efficiencies and "
                        "overheads replace the chip's catalog figures")
    common.add_sets(p)


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict one deployment: TPOT/TTFT, tokens/s per chip, memory, price",
                       description="Roofline step time per op group with efficiencies, plus TP all-reduce, EP "
                                   "all-to-all and AFD traffic; an infeasible deployment is reported as such.")
    p.add_argument("--chip", default="h100", help="chip id (see `modelchip chips`; ignored with --profile)")
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--num-chips", type=int, dest="num_chips", metavar="N", help="chips in the deployment")
    n.add_argument("--chips", type=int, dest="num_chips_deprecated", metavar="N",
                   help="deprecated alias of --num-chips (a count here; in compare, --chips is a list of chip ids)")
    p.add_argument("--strategy", required=True, help="tp, ep or afd")
    p.add_argument("--attn-chips", type=int, default=0, help="AFD: attention chips")
    p.add_argument("--ffn-chips", type=int, default=0, help="AFD: FFN chips")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch", type=float, help="sequences per chip (per attention chip under AFD); a fraction spreads "
                                              "one sequence over chips (0.125: one sequence on TP8)")
    g.add_argument("--tpot-slo-ms", type=float, help="pick the largest batch meeting this TPOT")
    add_deployment_args(p)
    s = p.add_argument_group("serving (--phase serve)")
    s.add_argument("--input-len", type=int, default=0, help="prompt tokens per request")
    s.add_argument("--output-len", type=int, default=0, help="output tokens per request")
    s.add_argument("--concurrency", type=float, default=0,
                   help="requests in flight in the whole deployment (default: as many as fit, the engine's "
                        "maximum load)")
    s.add_argument("--request-rate", type=float, default=0,
                   help="requests per second arriving (instead of --concurrency)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def build(args, chip_id: str, chips: int, strategy: str, batch: int, attn: int = 0, ffn: int = 0,
          cost: ModelCost | None = None):
    """(model cost, deployment) for `args` on `chips` x `chip_id`. `cost`: the model cost an earlier call with the
    same model, sets and formats returned (a plan builds ~600 deployments of one model; loading and costing the
    model for each took a tenth of the plan)."""
    if strategy not in STRATEGIES:
        raise ModelchipError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    spec = load_model(args.model, args.sets) if cost is None else None
    precision = common.Precision(weight=args.weight_dtype, kv=args.kv_dtype,
                                 attention_weight=getattr(args, "attention_weight_dtype", ""))
    if cost is None:
        cost = model_cost(spec, precision)
    chip = get_chip(chip_id)
    if args.price is not None:
        chip = chip.with_price(args.price)
    if strategy == "afd" and attn + ffn != chips:
        raise ModelchipError(f"--attn-chips ({attn}) + --ffn-chips ({ffn}) must equal --num-chips ({chips})")
    d = Deployment(chip=chip, chips=chips, strategy=strategy, batch=batch or 1, context=args.context,
                   phase=args.phase, prompt_len=args.prompt_len, cached_prefix=args.cached_prefix,
                   attn_chips=attn, ffn_chips=ffn,
                   precision=precision, mtp=args.mtp, mtp_acceptance=args.mtp_acceptance,
                   redundant_experts=args.redundant_experts, overlap=args.overlap, microbatches=args.microbatches,
                   system=system_for(chip, args.system), graphs=args.graphs,
                   moe_balance=getattr(args, "moe_balance", "eplb"), engine=getattr(args, "engine", ""),
                   weight_offload=getattr(args, "weight_offload", False),
                   efficiency=defaults().override(parse_overrides(args.efficiency)))
    if getattr(args, "profile", None):
        d = apply_profile(d, args.profile)
        for note in d.notes:  # e.g. a packed weight format the profile did not measure
            print(f"note: {note}", file=sys.stderr)
        if args.efficiency:
            d = replace(d, efficiency=d.efficiency.override(parse_overrides(args.efficiency)))
    return cost, d


def run(args) -> int:
    if args.num_chips is None:
        print("modelchip predict: --chips N is deprecated (compare's --chips lists chip ids); use --num-chips N",
              file=sys.stderr)
        args.num_chips = args.num_chips_deprecated
    if args.num_chips < 1:
        raise ModelchipError(f"--num-chips must be at least 1, got {args.num_chips}")
    if args.attn_chips > args.num_chips or args.ffn_chips > args.num_chips:
        raise ModelchipError(f"more attention/FFN chips than --num-chips ({args.num_chips})")
    if args.phase == "serve":
        return _serve(args)
    if args.batch is None and args.tpot_slo_ms is None:
        raise ModelchipError("give --batch or --tpot-slo-ms (or --phase serve with --input-len and --output-len)")
    cost, d = build(args, args.chip, args.num_chips, args.strategy, args.batch or 1, args.attn_chips, args.ffn_chips)
    p = best_batch_for_slo(cost, d, args.tpot_slo_ms) if args.tpot_slo_ms else evaluate(cost, d)
    out = {"model": args.model, "chip": d.chip.id, "system": d.system.id if d.system else None, "chips": d.chips,
           "strategy": d.strategy, "context": d.context, "phase": d.phase, **p.as_dict()}
    if args.json:
        common.print_json(out)
        return 0
    if not p.feasible:
        print(f"INFEASIBLE: {p.reason}")
    head = "TTFT" if d.phase == "prefill" else "TPOT"
    value = p.ttft_ms if d.phase == "prefill" else p.tpot_ms
    print(render(["quantity", "value"], [
        [head + " ms", "-" if value is None else f"{value:.2f}"],
        ["batch per chip", p.batch_per_chip],
        ["tokens/s per chip", "-" if p.tokens_per_s_per_chip is None else f"{p.tokens_per_s_per_chip:,.0f}"],
        ["memory GB per chip", f"{p.memory_gb_per_chip:.1f}"],
        *([["offloaded to host GB per chip", f"{p.memory_gb['offloaded_weights']:.1f}"]]
          if "offloaded_weights" in (p.memory_gb or {}) else []),
        ["USD per 1M tokens", "-" if p.usd_per_mtok is None else f"{p.usd_per_mtok:.3f}"],
        ["bound by", p.bound],
    ], title=f"{args.model} on {d.chips} x {d.chip.id} ({d.strategy}, {d.phase}, context {d.context})"))
    print(render(["op group", "ms per step"], [[k, f"{v:.3f}"] for k, v in p.breakdown_ms.items()]))
    return 0


def _serve(args) -> int:
    if args.batch is not None or args.tpot_slo_ms is not None:
        raise ModelchipError("--phase serve takes --concurrency or --request-rate, not --batch or --tpot-slo-ms")
    args.phase = "decode"  # build() makes the decode deployment; serving derives its prefill from it
    cost, d = build(args, args.chip, args.num_chips, args.strategy, 1, args.attn_chips, args.ffn_chips)
    r = serving.serve(cost, d, args.input_len, args.output_len, concurrency=args.concurrency,
                      request_rate=args.request_rate)
    out = {"model": args.model, "chip": d.chip.id, "system": d.system.id if d.system else None, "chips": d.chips,
           "strategy": d.strategy, "phase": "serve", "input_len": args.input_len, "output_len": args.output_len,
           **r.as_dict()}
    if args.json:
        common.print_json(out)
        return 0
    if not r.feasible:
        print(f"INFEASIBLE: {r.reason}")
    print(render(["quantity", "value"], [
        ["requests in flight", f"{r.concurrency:,.1f}"],
        ["sequences per chip", f"{r.batch_per_chip:,.2f}"],
        ["output tokens/s (deployment)", f"{r.output_tokens_per_s:,.0f}"],
        ["output tokens/s per chip", f"{r.output_tokens_per_s_per_chip:,.0f}"],
        ["input tokens/s per chip", f"{r.input_tokens_per_s_per_chip:,.0f}"],
        ["requests/s", f"{r.requests_per_s:,.2f}"],
        ["TTFT ms", f"{r.ttft_ms:.1f}"],
        ["TPOT ms", f"{r.tpot_ms:.2f}"],
    ], title=f"{args.model} on {d.chips} x {d.chip.id} ({d.strategy}, serving {args.input_len} in / "
             f"{args.output_len} out)"))
    print(render(["decode step op group", "ms"], [[k, f"{v:.3f}"] for k, v in r.decode.breakdown_ms.items()]))
    return 0
