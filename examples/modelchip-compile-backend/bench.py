"""Speed of the `compile` backend against the reference: prefill and greedy decode, tiny and real models.

    python examples/modelchip-compile-backend/bench.py [--models tiny smollm2-135m] [--threads N] [--repeats R]

Backends are measured alternately (A B A B ...) and the median is reported, so load from other processes
hits both alike. The first call of each backend (compilation) is excluded and timed separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from modelchip import LLM


def tiny_checkpoint(root: Path) -> Path:
    """The conformance kit's tiny llama as an HF checkpoint directory (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    from modelchip.conformance import tiny_models
    from modelchip.runtime.backends import get_backend

    model = tiny_models.build(get_backend("reference"), "llama", tiny_models.random_state("llama"), torch.float32)
    tensors = {name: slot.target().clone().contiguous() for name, slot in model.slots().items()}
    save_file(tensors, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(tiny_models.CONFIGS["llama"]))
    return root


def timed(fn, llm) -> float:
    start = time.perf_counter()
    fn(llm)
    return time.perf_counter() - start


def jobs(vocab: int, args) -> dict:
    """name -> (function of an LLM, tokens it processes)."""
    prompt = [(7 * i + 3) % vocab for i in range(args.prefill)]
    short = [[(11 * i + 5 * s + 1) % vocab for i in range(8)] for s in range(max(args.batches, default=0))]
    out = {f"prefill {args.prefill} tokens": (partial(LLM.logits, token_ids=prompt), args.prefill)}
    for b in args.batches:
        out[f"decode batch {b}"] = (partial(LLM.generate, prompts=short[:b], max_tokens=args.decode,
                                            temperature=0.0), b * args.decode)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    ap.add_argument("--backends", nargs="+", default=["reference", "compile"])
    ap.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=256, help="prompt tokens of the prefill measurement")
    ap.add_argument("--decode", type=int, default=32, help="new tokens per sequence in decode measurements")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            path = str(tiny_checkpoint(Path(tmp))) if model == "tiny" else model
            llms = {b: LLM(path, backend=b, dtype=args.dtype) for b in args.backends}
            for job, (fn, tokens) in jobs(next(iter(llms.values())).vocab_size, args).items():
                first = {b: timed(fn, llm) for b, llm in llms.items()}  # compiles, warms caches
                times: dict[str, list[float]] = {b: [] for b in llms}
                for _ in range(args.repeats):
                    for b, llm in llms.items():
                        times[b].append(timed(fn, llm))
                med = {b: statistics.median(t) for b, t in times.items()}
                base = med[args.backends[0]]
                for b in llms:
                    rows.append({"model": model, "dtype": args.dtype, "job": job, "backend": b, "median_s": med[b],
                                 "tokens_per_s": tokens / med[b], "speedup": base / med[b], "first_call_s": first[b]})
                    if not args.json:
                        print(f"{model:14s} {args.dtype:9s} {job:22s} {b:10s} {med[b] * 1e3:9.1f} ms  "
                              f"{tokens / med[b]:9.1f} tok/s  x{base / med[b]:.2f}  (first call {first[b]:.1f} s)",
                              flush=True)
            for b, llm in llms.items():
                if b != "reference" and not args.json:
                    print(f"  {b} fallbacks: {llm.ops.fallback_report()['fallback_calls']}; "
                          f"own: {dict(getattr(llm.ops.backend, 'fallbacks', {}))}")
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
