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
    b.add_argument("--profile", default=None, help="a profile from `modelchip calibrate` to predict with")
    b.add_argument("--threads", type=common.positive_int, default=None,
                   help="CPU threads torch may use (default: the profile's, so the run matches its calibration; "
                        "without a profile torch's default)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON")
    b.set_defaults(func=run_bench)


def run_calibrate(args) -> int:
    from modelchip.calibrate.profile import calibrate

    _set_threads(args.threads)
    start = time.perf_counter()
    profile = calibrate(args.backend, args.device, progress=lambda m: print(f"  {m}", file=sys.stderr),
                        passes=args.passes)
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
    ], title=f"{profile['name']}"))
    unsteady = profile["measurements"]["unsteady"]
    disturbed = profile["measurements"]["disturbed_passes"]
    if disturbed:
        print(f"\nPass(es) {', '.join(map(str, disturbed))} of {args.passes} strayed from the median pass (a busy "
              "machine?); the median pass is used")
    if unsteady:
        print(f"\nStill unsteady after repeated attempts (a busy machine?): {', '.join(unsteady)}")
    print(f"\nProfile: {Path(args.out).resolve()}  ({profile['calibrated']['seconds']:.0f} s)")
    return 0


def run_bench(args) -> int:
    from modelchip.calibrate.loop import measure_rounds, predict

    threads = args.threads
    if threads is None and args.profile:
        threads = json.loads(Path(args.profile).read_text()).get("calibrated", {}).get("threads")
    _set_threads(threads)
    measured = measure_rounds(args.model, list(dict.fromkeys(args.batch)), args.context, args.steps, args.rounds,
                              args.backend, args.device, args.dtype,
                              progress=lambda m: print(f"  {m}", file=sys.stderr))
    rows = []
    for batch, m in measured.items():
        # round spread: how far the rounds' median steps moved (interquartile range / median); disturbed: rounds
        # more than loop.DISTURBED slower than the median round, outvoted by the others
        row = {"batch": batch, "context": args.context, "measured_tokens_per_s": m.tokens_per_s,
               "round_spread": m.round_spread, "rounds": m.rounds, "disturbed_rounds": m.disturbed_rounds}
        if args.profile:
            predicted = predict(args.model, args.profile, batch, round(m.context), args.dtype)
            row |= {"predicted_tokens_per_s": predicted, "error": predicted / m.tokens_per_s - 1}
        rows.append(row)
    if args.json:
        common.print_json({"model": args.model, "backend": args.backend, "device": args.device,
                           "load_average": os.getloadavg()[0], "rows": rows})
        return 0
    headers = ["batch", "context", "measured tok/s", "round spread"] + (["predicted tok/s", "error"]
                                                                         if args.profile else [])
    print(render(headers, [[r["batch"], r["context"], f"{r['measured_tokens_per_s']:.1f}",
                            f"{100 * r['round_spread']:.0f}%"
                            + (f" ({r['disturbed_rounds']} of {r['rounds']} disturbed)" if r["disturbed_rounds"]
                               else "")]
                           + ([f"{r['predicted_tokens_per_s']:.1f}", f"{100 * r['error']:+.1f}%"]
                              if args.profile else []) for r in rows],
                 title=f"{args.model} decode on {args.backend}/{args.device} {args.dtype}"))
    return 0


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
