"""`modelchip calibrate` and `modelchip bench`: measure a backend, then check predictions against a real run."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from modelchip.cli import common
from modelchip.report.text import render, si


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="measure a backend on its device and write a chip profile",
                       description="GEMM throughput across shapes and dtypes, memory bandwidth, weight streaming, "
                                   "attention decode and per-op overhead, written as a chip profile that compare, "
                                   "predict and plan read with --profile.")
    common.add_runtime(p, dtype=False)
    p.add_argument("--threads", type=common.positive_int, default=None,
                   help="CPU threads torch may use (default torch's: one per core); on a machine other work "
                        "keeps busy, 1 avoids threads stalling on each other at every op")
    p.add_argument("--passes", type=common.positive_int, default=3,
                   help="passes over every measurement; each figure is the median pass, so a burst of other work "
                        "during one pass is outvoted (default 3; 1 is about three times faster)")
    p.add_argument("--out", default="profile.json", help="profile path (default profile.json)")
    p.add_argument("--json", action="store_true", help="print the profile")
    g = p.add_argument_group("collectives (a process group on this machine; docs/calibration.md)")
    g.add_argument("--collectives", action="store_true",
                   help="also sweep all-reduce, all-gather, all-to-all, send/recv and the step broadcast over "
                        "message sizes on --world-size processes, and fit latency and bandwidth to each")
    g.add_argument("--collectives-only", action="store_true",
                   help="measure only the collectives and add them to the existing profile at --out")
    g.add_argument("--world-size", type=int, nargs="+", default=[2], metavar="N",
                   help="process counts to measure the collectives at (default 2); the planner predicts "
                        "tensor parallelism over N ranks from the ones measured at N")
    p.set_defaults(func=run_calibrate)

    b = sub.add_parser("bench", help="measure the runtime's decode throughput; with --profile, compare to prediction",
                       description="Decode tokens/s of a model at each batch size and context on a backend. With "
                                   "--profile, the planner predicts the same runs from the calibrated profile and "
                                   "the error is shown.")
    b.add_argument("--model", default="smollm2-135m", help="model to run (default smollm2-135m)")
    b.add_argument("--batch", nargs="+", type=common.positive_int, default=[1, 4, 16],
                   help="batch sizes (default 1 4 16)")
    b.add_argument("--context", type=common.positive_int, default=128,
                   help="prompt tokens per sequence (default 128)")
    b.add_argument("--steps", type=common.positive_int, default=32,
                   help="decode steps to time per batch size (default 32)")
    b.add_argument("--rounds", type=common.positive_int, default=4,
                   help="rounds the timed steps are split into, the batch sizes taking turns; each figure is the "
                        "median round, so a burst of other work outvoted (default 4)")
    common.add_runtime(b)
    b.add_argument("--quantization", default=None, metavar="Q",
                   help="default: keep a quantized checkpoint's weights packed; 'none' dequantizes them to --dtype "
                        "(tensor-parallel ranks dequantize GGUF weights anyway, so compare sizes with 'none')")
    b.add_argument("--tensor-parallel-size", "-tp", type=int, nargs="+", default=None, metavar="N",
                   help="measure decode steps with the model split over each N processes (1: one process); shows "
                        "step time and rank 0's share in collectives, and with --profile the prediction of both")
    b.add_argument("--expert-parallel-size", "-ep", type=int, nargs="+", default=None, metavar="M",
                   help="the same for a MoE model with its experts sharded over each M processes (attention "
                        "replicated; 1: one process); with --data-parallel-attention, data-parallel attention + "
                        "expert parallelism over M")
    b.add_argument("--data-parallel-attention", action="store_true",
                   help="with --expert-parallel-size M > 1: each rank attends its own sequences (-dp M -ep M)")
    b.add_argument("--afd", type=int, nargs=2, action="append", default=None, metavar=("A", "F"),
                   help="the same with attention-FFN disaggregation over A attention and F FFN ranks (repeat for "
                        "several)")
    b.add_argument("--afd-micro-batches", type=common.positive_int, default=2, metavar="M",
                   help="micro-batches of an --afd run (default 2)")
    b.add_argument("--profile", default=None, help="a profile from `modelchip calibrate` to predict with")
    b.add_argument("--threads", type=common.positive_int, default=None,
                   help="CPU threads torch may use (default: the profile's, so the run matches its calibration; "
                        "without a profile torch's default)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON")
    b.set_defaults(func=run_bench)


def run_calibrate(args) -> int:
    from modelchip.calibrate import collectives
    from modelchip.calibrate.profile import calibrate

    _set_threads(args.threads)
    start = time.perf_counter()
    progress = lambda m: print(f"  {m}", file=sys.stderr)  # noqa: E731
    if args.collectives_only:
        profile = _existing_profile(args.out)
    else:
        profile = calibrate(args.backend, args.device, progress=progress, passes=args.passes)
        profile["calibrated"]["seconds"] = time.perf_counter() - start
    if args.collectives or args.collectives_only:
        profile["collectives"] = collectives.section(args.world_size, args.backend, args.device, progress)
        profile["collectives"]["date"] = time.strftime("%Y-%m-%d %H:%M")
    Path(args.out).write_text(json.dumps(profile, indent=2))
    if args.json:
        common.print_json(profile)
        return 0
    if args.collectives_only:
        print(_collectives_table(profile["collectives"]))
        print(f"\nProfile: {Path(args.out).resolve()}  ({time.perf_counter() - start:.0f} s)")
        return 0
    e, o = profile["efficiency"], profile["overhead"]
    print(render(["figure", "value"], [
        *[[f"peak {k} (best GEMM)", si(v["value"], "FLOP/s")] for k, v in profile["flops"].items()],
        ["memory bandwidth (best read)", si(profile["memory"]["bandwidth"]["value"], "B/s")],
        ["weight streaming / bandwidth", f"{e['memory']:.2f}"],
        ["attention decode / bandwidth", f"{e['attention_memory']:.2f}"],
        ["per op call", f"{o['per_op_s'] * 1e6:.1f} us"],
        ["per sequence per attention call", f"{o['per_seq_s'] * 1e6:.1f} us"],
        *_streaming_rows(profile.get("weight_streaming")),
    ], title=f"{profile['name']}"))
    if "collectives" in profile:
        print("\n" + _collectives_table(profile["collectives"]))
    unsteady = profile["measurements"]["unsteady"]
    disturbed = profile["measurements"].get("disturbed_passes", [])  # absent in profiles from before passes
    if disturbed:
        print(f"\nPass(es) {', '.join(map(str, disturbed))} of {args.passes} strayed from the median pass (a busy "
              "machine?); the median pass is used")
    if unsteady:
        print(f"\nStill unsteady after repeated attempts (a busy machine?): {', '.join(unsteady)}")
    print(f"\nProfile: {Path(args.out).resolve()}  ({profile['calibrated']['seconds']:.0f} s)")
    return 0


def _existing_profile(path: str) -> dict:
    from modelchip.errors import ModelchipError

    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelchipError(f"--collectives-only adds to an existing profile, but {path} cannot be read ({exc}); "
                             "run `modelchip calibrate --collectives` to write a whole one") from exc
    if not isinstance(profile, dict) or "flops" not in profile:
        raise ModelchipError(f"{path} is not a modelchip chip profile (no flops table)")
    return profile


def _collectives_table(section: dict) -> str:
    from modelchip.cost.collectives import read_collectives

    rows, notes = [], []
    for world, m in section["by_world_size"].items():
        measured = read_collectives({"collectives": section}, int(world))
        for name, fit in m["fit"].items():
            bw = fit["bandwidth_Bps"]
            tail = measured.tail_of(name) if name != "send_recv" else measured.tail_of("broadcast")
            rows.append([world, m["threads_per_rank"], name, f"{fit['alpha_s'] * 1e6:.1f} us",
                         si(bw, "B/s") if bw else "unbounded", f"{tail * 1e6:.0f} us" if tail else "-"])
        if measured.rank_rates:
            rates = measured.rank_rates
            notes.append(f"{world} ranks: a rank's share of the profiled compute at "
                         f"{' / '.join(f'{r:g}' for r, _, _ in rates)} rows: "
                         f"{' / '.join(f'{share:.2f}' for _, share, _ in rates)}; alone while the others wait, "
                         f"{' / '.join(f'{solo:.2f}' for _, _, solo in rates)} times the rate (under 1: noise)")
    table = render(["ranks", "threads/rank", "collective", "latency (alpha)", "bandwidth (1/beta)",
                    "tail in a run"], rows, title=f"collectives on {section['process_group']} ({section['device']})")
    return "\n".join([table, *notes])


def _streaming_rows(section: dict | None) -> list[list[str]]:
    """One row per packed format: its packed bytes/s at the fewest and most rows measured, and what was kept."""
    rows = []
    for fmt, entry in (section or {}).get("formats", {}).items():
        (m0, r0), (m1, r1) = entry["bytes_per_s"][0], entry["bytes_per_s"][-1]
        kept = "" if entry["kept"] == "packed" else f" ({entry['kept']})"
        rows.append([f"{fmt} streaming, {m0} / {m1} rows{kept}", f"{si(r0, 'B/s')} / {si(r1, 'B/s')} packed"])
    return rows


def run_bench(args) -> int:
    from modelchip.calibrate.loop import measure_rounds, predict, profile_notes, run_precision

    threads = args.threads
    if threads is None and args.profile:
        threads = json.loads(Path(args.profile).read_text()).get("calibrated", {}).get("threads")
    _set_threads(threads)
    if args.tensor_parallel_size or args.expert_parallel_size or args.afd or args.data_parallel_attention:
        return _bench_parallel(args)
    measured = measure_rounds(args.model, list(dict.fromkeys(args.batch)), args.context, args.steps, args.rounds,
                              args.backend, args.device, args.dtype, args.quantization,
                              progress=lambda m: print(f"  {m}", file=sys.stderr))
    rows, precision, notes = [], None, []
    if args.profile:  # the formats the loaded model kept its weights in (a GGUF file's blocks)
        precision, notes = run_precision(args.model, args.backend, args.device, args.dtype, args.quantization)
        notes += profile_notes(args.profile, precision)
    for batch, m in measured.items():
        # round spread: how far the rounds' median steps moved (interquartile range / median); disturbed: rounds
        # more than loop.DISTURBED slower than the median round, outvoted by the others
        row = {"batch": batch, "context": args.context, "measured_tokens_per_s": m.tokens_per_s,
               "round_spread": m.round_spread, "rounds": m.rounds, "disturbed_rounds": m.disturbed_rounds}
        if args.profile:
            predicted = predict(args.model, args.profile, batch, round(m.context), args.dtype, precision)
            row |= {"predicted_tokens_per_s": predicted, "error": predicted / m.tokens_per_s - 1}
        rows.append(row)
    if args.json:
        formats = _formats(precision) if precision else None
        common.print_json({"model": args.model, "backend": args.backend, "device": args.device,
                           "load_average": os.getloadavg()[0], "weight_formats": formats, "notes": notes,
                           "rows": rows})
        return 0
    headers = ["batch", "context", "measured tok/s", "round spread"] + (["predicted tok/s", "error"]
                                                                         if args.profile else [])
    print(render(headers, [[r["batch"], r["context"], f"{r['measured_tokens_per_s']:.1f}",
                            f"{100 * r['round_spread']:.0f}%"
                            + (f" ({r['disturbed_rounds']} of {r['rounds']} disturbed)" if r["disturbed_rounds"]
                               else "")]
                           + ([f"{r['predicted_tokens_per_s']:.1f}", f"{100 * r['error']:+.1f}%"]
                              if args.profile else []) for r in rows],
                 title=f"{args.model} decode on {args.backend}/{args.device} {args.dtype}"
                       + (f", weights {_formats(precision)}" if precision else "")))
    for note in notes:
        print(f"note: {note}")
    return 0


def _layouts(args) -> list:
    """The layouts --tensor-parallel-size, --expert-parallel-size and --afd ask for, in that order."""
    from modelchip.calibrate.loop import BenchLayout
    from modelchip.errors import ModelchipError

    sizes = [*(args.tensor_parallel_size or []), *(args.expert_parallel_size or []),
             *(n for pair in args.afd or [] for n in pair)]
    if any(n < 1 for n in sizes):
        raise ModelchipError(f"parallel sizes must be at least 1, got {min(sizes)}")
    if args.data_parallel_attention and not args.expert_parallel_size:
        raise ModelchipError("--data-parallel-attention goes with --expert-parallel-size M (data-parallel attention "
                             "+ expert parallelism over M ranks)")
    ep = "dp+ep" if args.data_parallel_attention else "ep"
    return ([BenchLayout("tp", n) for n in args.tensor_parallel_size or []]
            + [BenchLayout(ep, n) for n in args.expert_parallel_size or []]
            + [BenchLayout("afd", a, f, args.afd_micro_batches) for a, f in args.afd or []])


def _bench_parallel(args) -> int:
    """Measured vs predicted decode step time and communication share of each parallel layout."""
    from modelchip.calibrate.loop import measure_parallel, predict_parallel

    rows = []
    for layout in _layouts(args):
        measured = measure_parallel(args.model, layout, args.batch, args.context, args.steps, args.backend,
                                    args.device, args.dtype, args.quantization,
                                    progress=lambda m: print(f"  {m}", file=sys.stderr))
        for m in measured:
            row = {"layout": layout.label, "ranks": layout.world_size, "context": args.context, **m,
                   "comm_share": m["comm_s"] / m["step_s"]}
            if layout.kind == "tp":
                row["tensor_parallel_size"] = layout.size
            if args.profile:
                p = predict_parallel(args.model, args.profile, layout, m["batch"], args.context + args.steps // 2,
                                     args.dtype)
                step = p.tpot_ms / 1e3
                comm = (p.breakdown_ms["communication"] + p.breakdown_ms["collective_latency"]
                        + p.breakdown_ms["sync_wait"] + p.breakdown_ms["collective_tail"]) / 1e3
                row |= {"predicted_step_s": step, "predicted_comm_s": comm, "predicted_comm_share": comm / step,
                        "error": step / m["step_s"] - 1}
            rows.append(row)
    if args.json:
        common.print_json({"model": args.model, "backend": args.backend, "device": args.device, "dtype": args.dtype,
                           "rows": rows})
        return 0
    headers = ["layout", "batch", "measured step", "spread", "in collectives"] + (
        ["predicted step", "predicted in collectives", "error"] if args.profile else [])
    print(render(headers, [[r["layout"], r["batch"], f"{r['step_s'] * 1e3:.1f} ms",
                            f"{100 * r['spread']:.0f}%", f"{100 * r['comm_share']:.0f}%"]
                           + ([f"{r['predicted_step_s'] * 1e3:.1f} ms", f"{100 * r['predicted_comm_share']:.0f}%",
                               f"{100 * r['error']:+.1f}%"] if args.profile else []) for r in rows],
                 title=f"{args.model} decode steps on {args.backend}/{args.device} {args.dtype}, "
                       f"{args.context} tokens of context"))
    blocked = sum(r.get("blocked_waits", 0) for r in rows)
    if blocked:
        print(f"note: {blocked} of rank 0's collective waits outlasted the polling budget and blocked (an idle core "
              "wakes slowly on some machines; see docs/parallel.md, 'Waiting on a collective')")
    if any(r["layout"].startswith("afd") for r in rows):
        print("note: under AFD, 'in collectives' is rank 0's time broadcasting the step and waiting for the FFN "
              "ranks' outputs (the exchange and the FFN work the micro-batches did not hide)")
    return 0


def _formats(precision) -> str:
    """'q4_1' or 'q4_1, LM head q8_0': the weight formats a prediction priced."""
    parts = [precision.weight]
    if precision.attention_weight:
        parts.append(f"attention {precision.attention_weight}")
    if precision.lm_head_weight:
        parts.append(f"LM head {precision.lm_head_weight}")
    return ", ".join(parts)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
