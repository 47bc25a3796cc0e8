"""Tokens/s of greedy generation of a tiny MoE model in one process and in each parallel layout on this machine
(tensor parallel, expert parallel with attention replicated, data-parallel attention + expert parallel), with
the share of rank 0's generation time spent in collectives (on an oversubscribed CPU this includes waiting
for the slower rank).

    python benchmarks/bench_expert_parallel.py --family deepseek_v3 --size 2

The model is the conformance kit's tiny checkpoint of the family (hidden 48, 2 layers), written to a temporary
directory: a step of almost nothing but overhead and collectives. Prints one markdown row per layout.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="deepseek_v3")
    ap.add_argument("--size", type=int, default=2)
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    from bench_tensor_parallel import _cpu
    from modelchip.conformance.parallel_check import sizes_of
    from modelchip.conformance.tiny_checkpoint import write_checkpoint
    from modelchip.conformance.tiny_models import CONFIGS
    from modelchip.llm import LLM

    model = str(write_checkpoint(CONFIGS[args.family], tempfile.mkdtemp() + f"/tiny-{args.family}"))
    prompts = [[1 + (i + j) % 90 for j in range(16)] for i in range(args.sequences)]
    print(f"| date | machine | model | layout | backend/dtype | {args.sequences} x (prefill 16 + decode "
          f"{args.tokens}): tok/s | time in collectives (rank 0) | collective calls/step |")
    print("|---|---|---|---|---|---|---|---|")
    for layout in ("single", "tp", "ep", "dp+ep"):
        sizes = {} if layout == "single" else sizes_of(layout, args.size)
        llm = LLM(model, backend=args.backend, dtype=args.dtype, **sizes)
        try:
            llm.generate(prompts, max_tokens=4)  # warm-up: first-call allocations and kernel dispatch
            comm = llm.ops.comm
            s0, c0 = comm.seconds, comm.calls
            start = time.perf_counter()
            out = llm.generate(prompts, max_tokens=args.tokens)
            seconds = time.perf_counter() - start
            n = sum(len(g.token_ids) for g in out)
            name = "1 process" if layout == "single" else "+".join(f"{p}{args.size}" for p in layout.split("+"))
            print(f"| {time.strftime('%Y-%m-%d')} | {platform.machine()} {_cpu()} | tiny {args.family} | {name} | "
                  f"{llm.ops.name}/{str(llm.dtype).removeprefix('torch.')} | {n / seconds:.1f} | "
                  f"{100 * (comm.seconds - s0) / seconds:.0f}% | {(comm.calls - c0) / (args.tokens + 1):.0f} |",
                  flush=True)
        finally:
            llm.close()


if __name__ == "__main__":
    main()
