"""Benchmark: one decode step's matmuls (every linear weight of a model, once) at decode-to-prefill row counts,
through each weight layout the cpu backend can use, in one run, same weights, same thread count.

Layouts: the cpu backend's pair-blocked bfloat16 matmul (cpu_linear_bf16.cpp, wherever the CPU has
AVX512-BF16), through vdpbf16ps and, on AMX CPUs, through AMX tiles over the same blocks (`bf16_pairs_amx`:
the measurement that decides the default there), or with --dtype float32 the blocked float32 matmul
(cpu_linear_f32.cpp), oneDNN's packed weights, and `F.linear` on plain [out, in] weights. Per
row count: milliseconds for the whole set (median of --repeat), the weights' read rate, and each layout's ratio
against oneDNN packed.
Not a timed unit test; record the JSON it prints in BENCHMARKS.md.

    python benchmarks/bench_linear.py                       # smollm2-135m, bfloat16, rows 1 2 4 16 64 256 512
    python benchmarks/bench_linear.py --model qwen3-0.6b --rows 1 16
    python benchmarks/bench_linear.py --dtype float32 --rows 1 2 16 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def machine() -> str:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_serving import machine as serving_machine  # one description of the machine for both benchmarks

    return serving_machine()


def weight_shapes(model: str) -> list[tuple[int, int]]:
    """[out, in] of every weight `ops.linear` reads in one forward, in the order the decoder reads them."""
    from modelchip.spec.config import load_model

    spec = load_model(model)
    shapes = []
    for layer in spec.layers:
        a, f = layer.attention, layer.ffn
        if a.kind != "gqa" or f.kind != "dense":
            raise SystemExit(f"bench_linear: {model} layer has {a.kind}/{f.kind}; this script lists GQA + dense")
        h, g, d = a.num_heads, a.num_kv_heads, a.head_dim
        shapes += [((h + 2 * g) * d, spec.hidden_size), (spec.hidden_size, h * d),
                   (2 * f.intermediate_size, spec.hidden_size), (spec.hidden_size, f.intermediate_size)]
    return shapes + [(spec.vocab_size, spec.hidden_size)]


def _pairs(kernels, amx: bool):
    """The pair-blocked matmul through vdpbf16ps (amx=False) or AMX tiles, whichever the kernels default to."""
    def call(x, w, o):
        kernels.set_linear_bf16_amx(amx)
        return kernels.linear_bf16(x, w, o)

    return call if getattr(kernels, "has_linear_bf16_amx", False) else (lambda x, w, o: kernels.linear_bf16(x, w, o))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 16, 64, 256, 512])
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: CPU time of this thread (with --threads 1), for a machine shared with other work")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="float32 measures the blocked float32 matmul (cpu_linear_f32.cpp) against oneDNN")
    args = ap.parse_args()
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("bench_linear: --clock thread counts this thread only; use it with --threads 1")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    from modelchip.runtime.backends import cpu_kernels
    from modelchip.runtime.backends.cpu import _LINEAR

    kernels, why = cpu_kernels.load()
    shapes = weight_shapes(args.model)
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    plain = [(torch.randn(o, i, generator=g) / i ** 0.5).to(dtype) for o, i in shapes]
    layouts = {"onednn_packed": [torch.ops.mkldnn._reorder_linear_weight(w) for w in plain], "plain": plain}
    calls = {"onednn_packed": lambda x, w, o: _LINEAR(x, w, None, "none", [], ""),
             "plain": lambda x, w, o: F.linear(x, w)}
    if kernels is not None and kernels.has_linear_bf16 and dtype == torch.bfloat16:
        layouts["bf16_pairs"] = [kernels.pack_linear_bf16(w) for w in plain]
        calls["bf16_pairs"] = _pairs(kernels, amx=False)
        if getattr(kernels, "has_linear_bf16_amx", False):  # the same pair blocks through AMX tiles
            layouts["bf16_pairs_amx"] = layouts["bf16_pairs"]
            calls["bf16_pairs_amx"] = _pairs(kernels, amx=True)
    if kernels is not None and dtype == torch.float32:
        layouts["f32_blocks"] = [kernels.pack_linear_f32(w) for w in plain]
        calls["f32_blocks"] = lambda x, w, o: kernels.linear_f32(x, w, o)
    weight_bytes = sum(o * i * dtype.itemsize for o, i in shapes)
    results = []
    for rows in args.rows:
        xs = {i: torch.randn(rows, i, generator=g).to(dtype) for i in {i for _, i in shapes}}
        times: dict[str, list[float]] = {name: [] for name in layouts}
        for _ in range(args.repeat):  # interleaved, so drift in the machine hits every layout alike
            for name, weights in layouts.items():
                call = calls[name]
                start = clock()
                for w, (o, i) in zip(weights, shapes, strict=True):
                    call(xs[i], w, o)
                times[name].append(clock() - start)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        row = {"rows": rows, "ms": {k: round(v, 3) for k, v in ms.items()},
               "weights_gb_s": {k: round(weight_bytes / v / 1e6, 1) for k, v in ms.items()},
               "speedup_vs_onednn_packed": {k: round(ms["onednn_packed"] / v, 2) for k, v in ms.items()}}
        results.append(row)
        print(f"rows {rows}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), file=sys.stderr)
    print(json.dumps({
        "benchmark": "linear-layouts", "model": args.model, "dtype": args.dtype, "matmuls": len(shapes),
        "clock": args.clock,
        "weight_mb": round(weight_bytes / 1e6, 1), "threads": args.threads,
        "own_kernel": next((k for k in ("bf16_pairs_amx", "bf16_pairs", "f32_blocks") if k in layouts),
                           f"unavailable ({why or 'no AVX512-BF16'})"),
        "f32_isa": kernels.f32_isa() if kernels is not None else None,
        "machine": machine() + f", torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
