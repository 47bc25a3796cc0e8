"""Tokens/s of greedy generation on 1 process vs N tensor-parallel processes on this machine, and the share of
rank 0's generation time spent in collectives (all-reduce, all-gather; on an oversubscribed CPU this includes
waiting for the slower rank).

    python benchmarks/bench_tensor_parallel.py --model smollm2-135m --tp 1 3
    python benchmarks/bench_tensor_parallel.py --model tiny --tp 1 2

`tiny` is the conformance kit's tiny Llama (hidden 48, 2 layers), written to a temporary checkpoint: a step of
almost nothing but overhead and collectives. Prints one markdown row per size. For decode step times beside the
planner's prediction from a calibrated profile, use `modelchip bench --profile p.json --tensor-parallel-size 1 3`
(docs/calibration.md).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()

    from modelchip.llm import LLM

    model = args.model
    if model == "tiny":
        from modelchip.conformance.tiny_checkpoint import write_checkpoint
        from modelchip.conformance.tiny_models import CONFIGS

        model = str(write_checkpoint(CONFIGS["llama"], tempfile.mkdtemp() + "/tiny-llama"))
    prompt = list(range(1, 17))  # 16 prompt tokens, ids valid in every vocabulary here
    print(f"| date | machine | model | ranks | backend/dtype | prefill 16 + decode {args.tokens}: tok/s "
          "| time in collectives (rank 0) | collective calls/token |")
    print("|---|---|---|---|---|---|---|---|")
    for tp in args.tp:
        llm = LLM(model, backend=args.backend, dtype=args.dtype, tensor_parallel_size=tp)
        try:
            llm.generate([prompt], max_tokens=4)  # warm-up: first-call allocations and kernel dispatch
            comm = llm.ops.comm
            s0, c0 = comm.seconds, comm.calls
            start = time.perf_counter()
            out = llm.generate([prompt], max_tokens=args.tokens)[0]
            seconds = time.perf_counter() - start
            n = len(out.token_ids)
            share = (comm.seconds - s0) / seconds
            print(f"| {time.strftime('%Y-%m-%d')} | {platform.machine()} {_cpu()} | {args.model} | {tp} | "
                  f"{llm.ops.name}/{str(llm.dtype).removeprefix('torch.')} | {n / seconds:.1f} | "
                  f"{100 * share:.0f}% | {(comm.calls - c0) / n:.0f} |", flush=True)
        finally:
            llm.close()


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
