"""Profile: where one batch-1 decode step goes, op by op, on the cpu backend through the engine.

Wraps the backend's ops with timers (matmuls by [out x in] shape, attention, norms, rotary, SiLU, cache writes,
sampling) and reports per step each op's time and call count, and the rest of the step (Python between ops,
module calls, the engine). `--clock thread` times CPU seconds of the calling thread instead of wall time, for
a machine shared with other work (then use --threads 1: other threads' work is not counted). The cpu backend's
fused decoder stack runs a whole step's layers in one call the timers cannot see into, so this profile turns it
off (MODELCHIP_FUSED_LAYERS=0): it shows the ops one by one, and the glue the fused stack removes. Not a timed test;
record what it prints in BENCHMARKS.md with the CPU model, date and load average.

    python benchmarks/profile_step.py /work/llamacpp/models/smollm2-135m-F32.gguf --dtype float32
    MODELCHIP_F32_MATMUL=onednn python benchmarks/profile_step.py PATH --dtype float32 --threads 1 --clock thread
"""

from __future__ import annotations

import argparse
import collections
import os
import time

import torch

OPS = ("linear", "rms_norm", "rotary_embedding", "write_kv", "paged_attention", "silu_and_mul", "embedding",
       "sample")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a GGUF file, a checkpoint directory or a catalog name")
    ap.add_argument("--dtype", default=None, help="default: the fastest for this CPU")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    ap.add_argument("--tokens", type=int, default=64, help="decode steps measured")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall")
    args = ap.parse_args()
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("profile_step: --clock thread counts this thread only; use it with --threads 1")
    torch.set_num_threads(args.threads)
    os.environ["MODELCHIP_FUSED_LAYERS"] = "0"  # per-op timers: the layers op by op (see above)
    from modelchip import LLM
    from modelchip.engine import EngineConfig, LLMEngine, SamplingParams

    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    llm = LLM(args.model, backend="cpu", dtype=args.dtype)
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=4 * (args.tokens + 8), max_num_seqs=8))
    counter = iter(range(10**9))

    def decode(n: int) -> None:  # a 1-token prompt, then n - 1 decode steps, as llama-bench's tg
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        engine.add_request(f"r{next(counter)}", [1], params)
        while engine.has_unfinished_requests():
            engine.step()

    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    ops = llm.ops

    def timed(name: str):
        op = getattr(ops, name)

        def run(*a, **k):
            start = clock()
            out = op(*a, **k)
            key = f"linear {getattr(a[1], 'out_features', '?')}x{a[0].shape[-1]}" if name == "linear" else name
            spent[key] += clock() - start
            calls[key] += 1
            return out
        return run

    with torch.inference_mode():
        decode(4)  # warm-up: first touch of weights and caches
        start = clock()
        decode(args.tokens + 1)
        plain = (clock() - start) / (args.tokens + 1)
        for name in OPS:
            setattr(ops, name, timed(name))
        start = clock()
        decode(args.tokens + 1)
        step = (clock() - start) / (args.tokens + 1)
    n = args.tokens + 1
    print(f"{args.model}, {llm.dtype}, {args.threads} thread(s), {args.clock} clock: "
          f"{plain * 1e3:.2f} ms a step uninstrumented, {step * 1e3:.2f} instrumented")
    for key, s in spent.most_common():
        print(f"  {key:24s} {s / n * 1e3:8.3f} ms/step {calls[key] / n:6.1f} calls {s / calls[key] * 1e6:9.1f} us/call")
    rest = step - sum(spent.values()) / n
    print(f"  {'rest (Python, engine)':24s} {rest * 1e3:8.3f} ms/step")


if __name__ == "__main__":
    main()
