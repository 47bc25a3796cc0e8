"""Benchmark: prefill on the cpu backend with attention through the fused kernel (every query token a decode over
its own context: batch-invariant) against scaled-dot-product attention per sequence (the earlier prefill path,
still the path without the kernels), in one run, same model, interleaved.

Per prompt length: milliseconds for one whole-prompt forward (`LLM.logits`, median of --repeat) each way, and
the attention calls' share of it. Not a timed unit test; record the JSON it prints in BENCHMARKS.md.

    python benchmarks/bench_prefill.py                         # smollm2-135m, bfloat16, 32 128 512 tokens
    python benchmarks/bench_prefill.py --dtype float32 --tokens 256 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_serving import machine
    from modelchip import LLM

    llm = LLM(args.model, backend="cpu", dtype=args.dtype)
    backend = llm.ops.backend
    if backend.kernels is None:
        raise SystemExit(f"bench_prefill: the cpu kernels are not built here ({backend.kernels_missing})")
    kernels, fused = backend.kernels, backend.paged_attention
    spent = [0.0]

    def timed_attention(*a, **k):
        start = time.perf_counter()
        try:
            return fused(*a, **k)
        finally:
            spent[0] += time.perf_counter() - start

    def sdpa_attention(*a, **k):  # the per-sequence SDPA prefill: the backend's path when kernels are absent
        backend.kernels = None
        try:
            return timed_attention(*a, **k)
        finally:
            backend.kernels = kernels

    ids = llm.tokenizer.encode("The history of the city is long and full of turns. " * 200)
    rows = []
    for n in args.tokens:
        prompt = ids[:n]
        times = {"kernel": [], "sdpa": []}
        shares = {"kernel": [], "sdpa": []}
        for _ in range(args.repeat):
            for way, attention in (("kernel", timed_attention), ("sdpa", sdpa_attention)):
                backend.paged_attention = attention
                llm.ops.paged_attention = attention
                spent[0] = 0.0
                start = time.perf_counter()
                llm.logits(prompt)
                total = time.perf_counter() - start
                times[way].append(total * 1e3)
                shares[way].append(spent[0] / total)
        k, s = statistics.median(times["kernel"]), statistics.median(times["sdpa"])
        rows.append({"tokens": n, "kernel_ms": round(k, 1), "sdpa_ms": round(s, 1), "kernel_vs_sdpa": round(k / s, 3),
                     "attention_share_kernel": round(statistics.median(shares["kernel"]), 3),
                     "attention_share_sdpa": round(statistics.median(shares["sdpa"]), 3)})
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(json.dumps({"machine": machine(), "model": args.model, "dtype": args.dtype, "threads": args.threads,
                      "isa": kernels.isa(), "load_average": load, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
