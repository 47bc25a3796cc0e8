"""Tokens/s of greedy generation on 1 process vs attention-FFN disaggregation (A attention + F FFN ranks) on
this machine, with 1 micro-batch (no overlap) and 2 (attention of one micro-batch while the FFN ranks compute
the other), and the share of rank 0's generation time spent waiting for FFN outputs (transfer + FFN compute
not hidden behind attention).

    python benchmarks/bench_afd.py --model tiny --afd 1 1 --sequences 4 --single-threads 1
    python benchmarks/bench_afd.py --model smollm2-135m --afd 1 1 --tokens 16 --sequences 4

Micro-batches split a step's sequences, so overlap needs at least 2 sequences per step (--sequences).
Prints one markdown row per configuration.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from bench_tensor_parallel import _cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--afd", type=int, nargs=2, default=[1, 1], metavar=("A", "F"))
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--single-threads", type=int, default=None,
                    help="torch threads of the one-process run (the AFD ranks split the machine's threads)")
    args = ap.parse_args()
    if args.single_threads:
        import torch

        torch.set_num_threads(args.single_threads)

    from modelchip.llm import LLM

    model = args.model
    if model == "tiny":
        from modelchip.conformance.tiny_checkpoint import write_checkpoint
        from modelchip.conformance.tiny_models import CONFIGS

        model = str(write_checkpoint(CONFIGS["llama"], tempfile.mkdtemp() + "/tiny-llama"))
    prompts = [list(range(1 + s, 17 + s)) for s in range(args.sequences)]  # 16 tokens each
    print(f"| date | machine | model | ranks | micro-batches | backend/dtype | {args.sequences} x (prefill 16 + "
          f"decode {args.tokens}): tok/s | rank 0 waiting for FFN |")
    print("|---|---|---|---|---|---|---|---|")
    configs = [(None, 1)] + [(tuple(args.afd), m) for m in args.micro_batches]
    for afd, micro in configs:
        llm = LLM(model, backend=args.backend, dtype=args.dtype, afd=afd, afd_micro_batches=micro)
        try:
            llm.generate(prompts, max_tokens=4)  # warm-up: first-call allocations and kernel dispatch
            waited = llm.afd.seconds if llm.afd else 0.0
            start = time.perf_counter()
            outs = llm.generate(prompts, max_tokens=args.tokens)
            seconds = time.perf_counter() - start
            n = sum(len(o.token_ids) for o in outs)
            share = ((llm.afd.seconds if llm.afd else 0.0) - waited) / seconds
            ranks = f"{afd[0]}A + {afd[1]}F" if afd else "1"
            print(f"| {time.strftime('%Y-%m-%d')} | {_cpu()} | {args.model} | {ranks} | {micro if afd else '-'} | "
                  f"{llm.ops.name}/{str(llm.dtype).removeprefix('torch.')} | {n / seconds:.1f} | "
                  f"{100 * share:.0f}% |", flush=True)
        finally:
            llm.close()


if __name__ == "__main__":
    main()
