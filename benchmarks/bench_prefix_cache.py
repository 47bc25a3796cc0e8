"""Benchmark: time to first token with and without prefix caching, on a workload whose requests share one long
system prompt (the common chat-application case). Not a timed unit test; record the table it prints in
BENCHMARKS.md.

Workload: SmolLM2-135M-Instruct through its chat template, one system prompt (about --system-tokens tokens) and
--requests different short user questions, --max-tokens output tokens each. Two arrival patterns, each run on a
fresh engine with prefix caching off and on (same model, same process, same thread count):
- sequential: one request at a time, each sent when the one before finished (TTFT = the prefill of one prompt;
  with caching, every request after the first computes only its question);
- burst: all requests submitted at once (TTFT includes queueing behind the others' prefill chunks).

Reported per run: TTFT p50/p90/mean (engine-side: arrival to first token), the wall time of the whole run, and
the prefix-cache hit rate (tokens found / tokens looked up). The load average before and after is printed too;
other processes on the machine skew everything.

    python benchmarks/bench_prefix_cache.py                      # smollm2-135m, the fastest backend for the CPU
    python benchmarks/bench_prefix_cache.py --backend reference --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from modelchip import LLM, SamplingParams
from modelchip.engine import EngineConfig, LLMEngine

SYSTEM_SENTENCE = ("You are a careful assistant for a railway company. Answer questions about timetables, tickets, "
                   "refunds and accessibility briefly and politely, and say so when you do not know. ")
QUESTIONS = ["When does the first train to the airport leave?", "Can I bring a bicycle on board?",
             "How do I get a refund for a cancelled trip?", "Is there step-free access at the central station?",
             "Do children travel free?", "What is a season ticket?", "Can I change my seat reservation?",
             "Are dogs allowed on trains?", "Where can I buy tickets?", "What happens if my train is late?",
             "Is there wifi on the train?", "How early should I arrive?", "Can I eat on the train?",
             "What is the luggage allowance?", "Do you have quiet carriages?", "How do I book assistance?"]


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def prompts(llm: LLM, system_tokens: int, n: int) -> list[list[int]]:
    tok = llm.tokenizer
    system = SYSTEM_SENTENCE
    while len(tok.encode(system, add_special_tokens=False)) < system_tokens:
        system += SYSTEM_SENTENCE
    out = []
    for q in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]:
        text = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                       add_generation_prompt=True)
        out.append(tok.encode(text, add_special_tokens=False))
    return out


def run(llm: LLM, ps: list[list[int]], caching: bool, burst: bool, max_tokens: int, batched: int) -> dict:
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=32768, max_num_batched_tokens=batched,
                                         enable_prefix_caching=caching))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    seqs = []
    start = time.perf_counter()
    if burst:
        seqs = [engine.add_request(str(i), p, params) for i, p in enumerate(ps)]
        while engine.has_unfinished_requests():
            engine.step()
    else:
        for i, p in enumerate(ps):
            seqs.append(engine.add_request(str(i), p, params))
            while engine.has_unfinished_requests():
                engine.step()
    wall = time.perf_counter() - start
    ttft = [s.first_token_time - s.arrival_time for s in seqs]
    bm = engine.block_manager
    return {"arrivals": "burst" if burst else "sequential", "prefix_caching": caching,
            "ttft_p50_ms": round(1e3 * percentile(ttft, 50), 1), "ttft_p90_ms": round(1e3 * percentile(ttft, 90), 1),
            "ttft_mean_ms": round(1e3 * statistics.fmean(ttft), 1), "wall_s": round(wall, 2),
            "hit_rate": round(bm.prefix_cache_hits / bm.prefix_cache_queries, 3) if bm.prefix_cache_queries else 0.0,
            "outputs": [s.output_token_ids for s in seqs]}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--system-tokens", type=int, default=400)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    llm = LLM(args.model, backend=args.backend, dtype=args.dtype)
    ps = prompts(llm, args.system_tokens, args.requests)
    run(llm, ps[:2], True, False, 2, args.max_num_batched_tokens)  # warm-up: kernels, allocator, caches
    results = []
    for burst in (False, True):
        for caching in (False, True):
            results.append(run(llm, ps, caching, burst, args.max_tokens, args.max_num_batched_tokens))
    for off in (0, 2):  # greedy; equal wherever the backend is batch-invariant (docs/serving.md)
        results[off + 1]["outputs_equal_to_uncached"] = results[off]["outputs"] == results[off + 1]["outputs"]
    for r in results:
        del r["outputs"]
    report = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "backend": llm.ops.name, "dtype": str(llm.dtype).removeprefix("torch."), "model": args.model,
              "prompt_tokens": [min(map(len, ps)), max(map(len, ps))], "requests": len(ps),
              "max_tokens": args.max_tokens, "max_num_batched_tokens": args.max_num_batched_tokens,
              "load_avg_before": [round(x, 2) for x in load_before],
              "load_avg_after": [round(x, 2) for x in os.getloadavg()], "results": results}
    print(json.dumps(report, indent=1))
    print("\n| arrivals | prefix caching | TTFT p50 (ms) | TTFT p90 (ms) | TTFT mean (ms) | wall (s) | hit rate |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['arrivals']} | {'on' if r['prefix_caching'] else 'off'} | {r['ttft_p50_ms']} | "
              f"{r['ttft_p90_ms']} | {r['ttft_mean_ms']} | {r['wall_s']} | {r['hit_rate']} |")


if __name__ == "__main__":
    main()
