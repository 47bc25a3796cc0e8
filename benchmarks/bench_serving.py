"""Benchmark: the serving engine on SmolLM2-135M against transformers, in one run, same GGUF file, same dtype,
same thread count (issue 4). Not a timed unit test; record the JSON it prints in BENCHMARKS.md.

Measures, each engine in its own fresh process (so peak memory is its own):
- batch-1 decode tokens/s: modelchip's engine vs transformers `generate` (target >= 2x);
- 16 concurrent requests, aggregate output tokens/s (prefill included): the engine with all 16 submitted at once
  vs transformers `generate` on a static batch of 16 (target >= 1.5x); equal prompts and outputs, the case
  where a static batch wastes nothing;
- the same 16 requests with mixed lengths (prompts and outputs uniform in [16, 128] tokens): the engine lets each
  request leave when it is done; the static batch left-pads prompts and decodes every row to the longest
  output. Counted: the output tokens the requests asked for, per second;
- batch-1 decode as a fraction of the memory-bandwidth roofline: bandwidth from a large tensor copy in this run,
  bytes per token = the weights one decode step reads (every matrix once, the tied embedding as the LM head)
  plus the KV cache it reads (target >= 60%);
- TTFT and TPOT percentiles under the 16-request load; peak RSS (resource.getrusage) per engine;
- with --http (default on): the same 16 requests as concurrent streams through `modelchip serve` and the
  openai client, client-side TTFT/TPOT;
- with --profile: where a decode step's time goes (per contract op, the rest is Python glue and the engine).

    python benchmarks/bench_serving.py                   # defaults: smollm2-135m, reference backend, float32
    python benchmarks/bench_serving.py --backend cpu --dtype bfloat16 --profile

Other processes on the machine skew everything: the load average before and after is in the output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def percentiles(values: list[float], points=(50, 90, 99)) -> dict:
    if not values:
        return {}
    xs = sorted(values)
    out = {}
    for p in points:
        k = (len(xs) - 1) * p / 100
        lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
        out[f"p{p}"] = round(1e3 * (xs[lo] + (xs[hi] - xs[lo]) * (k - lo)), 2)
    out["mean"] = round(1e3 * statistics.fmean(xs), 2)
    return out  # milliseconds


def peak_rss_mb() -> float:
    """This process's peak RSS. getrusage's figure carries over the parent's peak through fork and exec, which is
    why the parent process never imports torch and every measurement runs in a fresh child."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def prompt_ids(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """The same random token ids for every engine (ids below 100 are left out: special tokens live there)."""
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


def mixed_workload(n: int, vocab: int, lo: int, hi: int, seed: int = 1) -> tuple[list[list[int]], list[int]]:
    """Requests as they come in practice: prompt and output lengths each drawn uniformly from [lo, hi]."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(100, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
    return prompts, [rng.randint(lo, hi) for _ in range(n)]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Busy:
    """CPU time this process used over a stretch of wall time, per thread it may use: near 1 means the threads
    had the cores; well below 1 means other processes took them (the timings are then not worth much)."""

    def __init__(self, threads: int):
        self.threads, self.cpu, self.wall = threads, 0.0, 0.0

    def __enter__(self):
        self._c, self._w = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu += cpu_seconds() - self._c
        self.wall += time.perf_counter() - self._w

    @property
    def utilization(self) -> float:
        return round(self.cpu / max(self.wall * self.threads, 1e-9), 2)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


# -- memory bandwidth -------------------------------------------------------------------------------------------


def bandwidth(threads: int, mib: int = 256, repeat: int = 10) -> dict:
    """Best of `repeat` copies of a `mib` MiB buffer, counting the read and the write (GB/s)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    out = {"torch": torch.__version__}
    n = mib * 2**20 // 4
    src, dst = torch.rand(n), torch.empty(n)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    a, b = np.random.rand(n).astype(np.float32), np.empty(n, np.float32)
    best_np = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(b, a)
        best_np = min(best_np, time.perf_counter() - t)
    return out | {"torch_copy_gb_s": round(2 * n * 4 / best / 1e9, 2),
                  "numpy_copy_gb_s": round(2 * n * 4 / best_np / 1e9, 2)}


# -- modelchip --------------------------------------------------------------------------------------------------


def _weight_bytes(llm) -> int:
    """Bytes of weights one decode step reads: every parameter once; an untied input embedding is only gathered."""
    total = sum(llm.parameter_bytes.values())  # as loaded: a tied LM head is the embedding itself, listed once
    if not llm.spec.tie_word_embeddings:
        total -= llm.parameter_bytes["embed_tokens"]
    return total


def _timed_ops(llm) -> dict:
    """Wrap every contract op with a wall-clock timer (CPU ops are synchronous); returns the running totals."""
    from modelchip.runtime.contract import OPS

    totals = dict.fromkeys(OPS, 0.0)
    for op in OPS:
        fn = getattr(llm.ops, op)

        def timed(*args, _fn=fn, _op=op, **kwargs):
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                totals[_op] += time.perf_counter() - t

        setattr(llm.ops, op, timed)
    return totals


def run_modelchip(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from modelchip import LLM
    from modelchip.engine import EngineConfig, LLMEngine, SamplingParams
    from modelchip.runtime.kv_cache import KVCache

    t = time.perf_counter()
    llm = LLM(args.model, backend=args.backend, device="cpu", dtype=args.dtype)
    load_s = time.perf_counter() - t
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=max(8192, args.concurrency * (args.prompt_tokens +
                                                                                       args.output_tokens) * 2),
                                         max_num_seqs=max(64, args.concurrency), max_num_batched_tokens=512))
    prompts = prompt_ids(args.concurrency, args.prompt_tokens, llm.vocab_size)

    def run(batch: list[list[int]], tokens: int) -> tuple[float, list]:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.monotonic()
        seqs = [engine.add_request(f"r{time.monotonic_ns()}-{i}", p, params, arrival_time=start)
                for i, p in enumerate(batch)]
        while engine.has_unfinished_requests():
            engine.step()
        return time.monotonic() - start, seqs

    busy = Busy(args.threads)
    with torch.inference_mode():
        run(prompts[:2], 4)  # warm-up: first-touch of weights and caches
        decode = []
        for _ in range(args.repeat):
            with busy:
                _, (seq,) = run(prompts[:1], args.decode_tokens + 1)
            decode.append(args.decode_tokens / (seq.last_token_time - seq.first_token_time))
        with busy:
            wall, seqs = run(prompts, args.output_tokens)
        mixed_prompts, mixed_outputs = mixed_workload(args.concurrency, llm.vocab_size, *args.mixed)
        start = time.monotonic()
        for i, (p, n) in enumerate(zip(mixed_prompts, mixed_outputs, strict=True)):
            engine.add_request(f"mixed-{i}", p, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
                               arrival_time=start)
        while engine.has_unfinished_requests():
            engine.step()
        mixed_wall = time.monotonic() - start
        ttft = [s.first_token_time - s.arrival_time for s in seqs]
        tpot = [(s.last_token_time - s.first_token_time) / (args.output_tokens - 1) for s in seqs]
        profile = None
        if args.profile:
            totals = _timed_ops(llm)
            profile = {}
            for n in (1, args.concurrency):
                for k in totals:
                    totals[k] = 0.0
                steps0 = engine.stats.steps
                t0 = time.perf_counter()
                run(prompts[:n], args.decode_tokens // 2)
                elapsed = time.perf_counter() - t0
                steps = engine.stats.steps - steps0
                ops = {k: round(1e3 * v / steps, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v}
                profile[f"batch_{n}"] = {"step_ms": round(1e3 * elapsed / steps, 3), "ops_ms_per_step": ops,
                                         "rest_ms_per_step (python glue + engine)":
                                             round(1e3 * (elapsed - sum(totals.values())) / steps, 3)}
    weights = _weight_bytes(llm)
    kv_per_token = KVCache.bytes_per_token(llm.layouts, llm.dtype)
    mean_ctx = args.prompt_tokens + args.decode_tokens / 2
    return {
        "load_s": round(load_s, 2),
        "backend": llm.ops.name,
        "vocab_size": llm.vocab_size,
        "fallbacks": llm.ops.fallback_report()["fallback_calls"],
        "bf16_linear": getattr(llm.ops.backend, "bf16_linear", None),  # cpu backend: pair blocks or oneDNN
        "batch1_decode_tok_s": round(max(decode), 2),
        "batch1_decode_runs_tok_s": [round(d, 2) for d in decode],
        "concurrent_aggregate_tok_s": round(args.concurrency * args.output_tokens / wall, 2),
        "concurrent_wall_s": round(wall, 3),
        "mixed_aggregate_tok_s": round(sum(mixed_outputs) / mixed_wall, 2),
        "ttft_ms": percentiles(ttft),
        "tpot_ms": percentiles(tpot),
        "weight_bytes_per_token": weights,
        "kv_bytes_per_token_read": int(kv_per_token * mean_ctx),
        "preemptions": engine.stats.preemptions,
        "cpu_utilization": busy.utilization,
        "peak_rss_mb": peak_rss_mb(),
        "profile": profile,
    }


# -- transformers -----------------------------------------------------------------------------------------------


def fixed_length_generate(model):
    """`generate(batch, tokens) -> seconds` for a transformers model: greedy, exactly `tokens` new tokens per
    row (no end-of-sequence stop), timed around `model.generate`."""
    import torch

    gen = model.generation_config
    gen.eos_token_id = gen.bos_token_id = None
    gen.pad_token_id = 0

    def generate(batch: list[list[int]], tokens: int) -> float:
        x = torch.tensor(batch)
        t0 = time.perf_counter()
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=tokens,
                             min_new_tokens=tokens)
        elapsed = time.perf_counter() - t0
        if out.shape[1] != x.shape[1] + tokens:
            raise RuntimeError(f"transformers generated {out.shape[1] - x.shape[1]} tokens, asked for {tokens}")
        return elapsed

    return generate


def run_transformers(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    from modelchip.runtime.loaders.resolve import ALIASES, alias_path

    path = alias_path(args.model) if args.model in ALIASES else Path(args.model)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    model.eval()
    load_s = time.perf_counter() - t
    prompts = prompt_ids(args.concurrency, args.prompt_tokens, model.config.vocab_size)
    generate = fixed_length_generate(model)

    busy = Busy(args.threads)
    with torch.inference_mode(), busy:
        generate(prompts[:2], 4)
        decode = []
        for _ in range(args.repeat):
            first = generate(prompts[:1], 1)
            full = generate(prompts[:1], args.decode_tokens + 1)
            decode.append(args.decode_tokens / (full - first))
        wall = generate(prompts, args.output_tokens)
        # a static batch: prompts left-padded to the longest, every row decoded until the longest output is done
        mixed_prompts, mixed_outputs = mixed_workload(args.concurrency, model.config.vocab_size, *args.mixed)
        width = max(map(len, mixed_prompts))
        x = torch.tensor([[0] * (width - len(p)) + p for p in mixed_prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in mixed_prompts])
        t0 = time.perf_counter()
        model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=max(mixed_outputs),
                       min_new_tokens=max(mixed_outputs))
        mixed_wall = time.perf_counter() - t0
    return {
        "load_s": round(load_s, 2),
        "transformers_version": transformers.__version__,
        "batch1_decode_tok_s": round(max(decode), 2),
        "batch1_decode_runs_tok_s": [round(d, 2) for d in decode],
        "static_batch_aggregate_tok_s": round(args.concurrency * args.output_tokens / wall, 2),
        "static_batch_wall_s": round(wall, 3),
        "mixed_static_batch_tok_s": round(sum(mixed_outputs) / mixed_wall, 2),
        "cpu_utilization": busy.utilization,
        "peak_rss_mb": peak_rss_mb(),
    }


# -- the HTTP server ----------------------------------------------------------------------------------------------


def run_http(args, vocab: int) -> dict:
    """`modelchip serve` in a subprocess; `concurrency` streaming completions at once through the openai client."""
    import re

    import openai

    cmd = [sys.executable, "-m", "modelchip", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0",
           "--backend", args.backend, "--dtype", args.dtype, "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        for line in proc.stdout:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError("modelchip serve did not start")
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)
        for _ in range(60):
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.5)
        prompts = prompt_ids(args.concurrency, args.prompt_tokens, vocab)

        def one(p: list[int]) -> tuple[float, float, int, float]:
            start = time.monotonic()
            first = last = None
            n = 0
            for chunk in client.completions.create(model=args.model, prompt=p, max_tokens=args.output_tokens,
                                                   temperature=0, stream=True, extra_body={"ignore_eos": True}):
                if chunk.choices:
                    now = time.monotonic()
                    first = first or now
                    last = now
                    n += 1
            return first - start, (last - first) / max(1, n - 1), n, start

        client.completions.create(model=args.model, prompt=prompts[0], max_tokens=2)  # warm-up
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, prompts))
        wall = time.monotonic() - start
        return {"aggregate_output_tok_s": round(args.concurrency * args.output_tokens / wall, 2),
                "wall_s": round(wall, 3), "client_ttft_ms": percentiles([r[0] for r in results]),
                "client_tpot_ms": percentiles([r[1] for r in results]),
                "note": "chunks are text deltas; a delta can carry more than one token"}
    finally:
        proc.terminate()
        proc.wait(10)


# -- main ---------------------------------------------------------------------------------------------------------


def in_child(fn, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads in every engine (default: the CPUs this process may use)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=64, help="tokens timed in the batch-1 decode runs")
    ap.add_argument("--output-tokens", type=int, default=64, help="tokens per request in the concurrent runs")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mixed", type=int, nargs=2, default=[16, 128], metavar=("LO", "HI"),
                    help="the mixed workload: prompt and output lengths uniform in [LO, HI] (default 16 128)")
    ap.add_argument("--repeat", type=int, default=3, help="batch-1 runs per engine (best counts)")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    load_before = os.getloadavg()
    result: dict = {"benchmark": "serving", "model": args.model, "dtype": args.dtype, "threads": args.threads,
                    "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
                    "settings": {k: getattr(args, k) for k in ("prompt_tokens", "decode_tokens", "output_tokens",
                                                                "concurrency", "repeat", "mixed")}}
    result["bandwidth"] = bw = in_child(bandwidth, args.threads)
    print("bandwidth", bw, file=sys.stderr)
    result["modelchip"] = mc = in_child(run_modelchip, args)
    print("modelchip", {k: v for k, v in mc.items() if k != "profile"}, file=sys.stderr)
    if not args.no_transformers:
        result["transformers"] = tf = in_child(run_transformers, args)
        print("transformers", tf, file=sys.stderr)
    if not args.no_http:
        result["http"] = run_http(args, mc["vocab_size"])
        print("http", result["http"], file=sys.stderr)

    peak_bw = max(bw["torch_copy_gb_s"], bw["numpy_copy_gb_s"]) * 1e9
    bytes_per_token = mc["weight_bytes_per_token"] + mc["kv_bytes_per_token_read"]
    roofline = peak_bw / bytes_per_token
    summary = {
        "batch1_decode_tok_s": mc["batch1_decode_tok_s"],
        "roofline_tok_s": round(roofline, 2),
        "roofline_fraction": round(mc["batch1_decode_tok_s"] / roofline, 3),
        "roofline_target": 0.6,
        "concurrent_aggregate_tok_s": mc["concurrent_aggregate_tok_s"],
        "ttft_ms_p50_p99": [mc["ttft_ms"].get("p50"), mc["ttft_ms"].get("p99")],
        "tpot_ms_p50_p99": [mc["tpot_ms"].get("p50"), mc["tpot_ms"].get("p99")],
        "peak_rss_mb": {"modelchip": mc["peak_rss_mb"]},
    }
    if not args.no_transformers:
        summary["batch1_ratio_vs_transformers"] = round(mc["batch1_decode_tok_s"] / tf["batch1_decode_tok_s"], 3)
        summary["batch1_target"] = 2.0
        summary["concurrent_ratio_vs_transformers_static"] = round(
            mc["concurrent_aggregate_tok_s"] / tf["static_batch_aggregate_tok_s"], 3)
        summary["concurrent_target"] = 1.5
        summary["mixed_ratio_vs_transformers_static"] = round(
            mc["mixed_aggregate_tok_s"] / tf["mixed_static_batch_tok_s"], 3)
        summary["peak_rss_mb"]["transformers"] = tf["peak_rss_mb"]
    result["summary"] = summary
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
