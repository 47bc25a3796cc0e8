"""`modelchip calibrate` and `modelchip bench`: measure a backend, then check predictions against a real run."""

from __future__ import annotations

import json
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
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch may use (default torch's: one per core); on a machine other work "
                        "keeps busy, 1 avoids threads stalling on each other at every op")
    p.add_argument("--out", default="profile.json", help="profile path (default profile.json)")
    p.add_argument("--json", action="store_true", help="print the profile")
    p.set_defaults(func=run_calibrate)

    b = sub.add_parser("bench", help="measure the runtime's decode throughput; with --profile, compare to prediction",
                       description="Decode tokens/s of a model at each batch size and context on a backend. With "
                                   "--profile, the planner predicts the same runs from the calibrated profile and "
                                   "the error is shown.")
    b.add_argument("--model", default="smollm2-135m", help="model to run (default smollm2-135m)")
    b.add_argument("--batch", nargs="+", type=int, default=[1, 4, 16], help="batch sizes (default 1 4 16)")
    b.add_argument("--context", type=int, default=128, help="prompt tokens per sequence (default 128)")
    b.add_argument("--steps", type=int, default=32, help="decode steps to time (default 32)")
    common.add_runtime(b)
    b.add_argument("--profile", default=None, help="a profile from `modelchip calibrate` to predict with")
    b.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch may use (default: the profile's, so the run matches its calibration; "
                        "without a profile torch's default)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON")
    b.set_defaults(func=run_bench)


def run_calibrate(args) -> int:
    from modelchip.calibrate.profile import calibrate

    _set_threads(args.threads)
    start = time.perf_counter()
    profile = calibrate(args.backend, args.device, progress=lambda m: print(f"  {m}", file=sys.stderr))
    profile["calibrated"]["seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(profile, indent=2))
    if args.json:
        common.print_json(profile)
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
    unsteady = profile["measurements"]["unsteady"]
    if unsteady:
        print(f"\nStill unsteady after repeated attempts (a busy machine?): {', '.join(unsteady)}")
    print(f"\nProfile: {Path(args.out).resolve()}  ({profile['calibrated']['seconds']:.0f} s)")
    return 0


def _streaming_rows(section: dict | None) -> list[list[str]]:
    """One row per packed format: its packed bytes/s at the fewest and most rows measured, and what was kept."""
    rows = []
    for fmt, entry in (section or {}).get("formats", {}).items():
        (m0, r0), (m1, r1) = entry["bytes_per_s"][0], entry["bytes_per_s"][-1]
        kept = "" if entry["kept"] == "packed" else f" ({entry['kept']})"
        rows.append([f"{fmt} streaming, {m0} / {m1} rows{kept}", f"{si(r0, 'B/s')} / {si(r1, 'B/s')} packed"])
    return rows


def run_bench(args) -> int:
    from modelchip.calibrate import microbench
    from modelchip.calibrate.loop import measure, predict, profile_notes, run_precision

    threads = args.threads
    if threads is None and args.profile:
        threads = json.loads(Path(args.profile).read_text()).get("calibrated", {}).get("threads")
    _set_threads(threads)
    rows, precision, notes = [], None, []
    for batch in args.batch:
        print(f"  batch {batch}...", file=sys.stderr)
        measured = measure(args.model, batch, args.context, args.steps, args.backend, args.device, args.dtype)
        timing = microbench.take_log()[f"bench batch {batch}"]
        # the spread of the timed steps (interquartile range / median) and how many attempts it took to get
        # steady steps: a result that stayed unsteady was measured on a disturbed machine
        row = {"batch": batch, "context": args.context, "measured_tokens_per_s": measured,
               "spread": timing.spread, "attempts": timing.attempts}
        if args.profile:
            if precision is None:  # the formats the loaded model kept its weights in (a GGUF file's blocks)
                precision, notes = run_precision(args.model, args.backend, args.device, args.dtype)
                notes += profile_notes(args.profile, precision)
            predicted = predict(args.model, args.profile, batch, args.context + args.steps // 2, args.dtype,
                                precision)
            row |= {"predicted_tokens_per_s": predicted, "error": predicted / measured - 1}
        rows.append(row)
    if args.json:
        formats = _formats(precision) if precision else None
        common.print_json({"model": args.model, "backend": args.backend, "device": args.device,
                           "weight_formats": formats, "notes": notes, "rows": rows})
        return 0
    headers = ["batch", "context", "measured tok/s", "step spread"] + (["predicted tok/s", "error"] if args.profile
                                                                        else [])
    print(render(headers, [[r["batch"], r["context"], f"{r['measured_tokens_per_s']:.1f}",
                            f"{100 * r['spread']:.0f}%" + ("" if r["attempts"] == 1 else f" ({r['attempts']} tries)")]
                           + ([f"{r['predicted_tokens_per_s']:.1f}", f"{100 * r['error']:+.1f}%"]
                              if args.profile else []) for r in rows],
                 title=f"{args.model} decode on {args.backend}/{args.device} {args.dtype}"
                       + (f", weights {_formats(precision)}" if precision else "")))
    for note in notes:
        print(f"note: {note}")
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
