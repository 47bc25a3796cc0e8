"""Benchmark: one forward's matmuls (every linear weight of a model, once: fused q/k/v, o, fused gate/up, down,
the output head) over packed GGUF Q8_0 / Q4_0 / Q4_1 weights (cpu_linear_quant.cpp) against the dense layouts
the cpu backend runs otherwise: bfloat16 pair blocks (cpu_linear_bf16.cpp) and oneDNN's packed float32, at batch-1
decode (1 row), 16 concurrent sequences (16 rows) and a 128-token prefill, same thread count, interleaved.

Per row count and layout: milliseconds for the whole set (median of --repeat), the packed weight bytes streamed per
second, and the ratio against bfloat16 pair blocks. The weights are random (speed does not depend on values), one
distinct copy per layer so no layer finds another's in cache. The machine's copy bandwidth is measured in the same
run. Not a timed unit test: record the JSON it prints in BENCHMARKS.md.

    python benchmarks/bench_quant_linear.py                          # smollm2-135m, rows 1 16 128, 2 threads
    python benchmarks/bench_quant_linear.py --isa avx512_vnni avx2 baseline --rows 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_linear import machine, weight_shapes  # noqa: E402  (one list of a model's matmuls for both)
from bench_serving import bandwidth  # noqa: E402

FORMATS = ("q8_0", "q4_0", "q4_1")


def quantized(fmt: str, shapes: list[tuple[int, int]], seed: int) -> list:
    """A QuantizedWeight per matmul: each distinct shape quantized once by the gguf package, then a separate copy
    of its bytes for every layer."""
    from gguf import GGMLQuantizationType, quants

    from modelchip.runtime.quant import QuantizedWeight

    rng = np.random.default_rng(seed)
    made = {}
    for shape in set(shapes):
        w = (rng.standard_normal(shape) / shape[1] ** 0.5).astype(np.float32)
        made[shape] = torch.from_numpy(quants.quantize(w, GGMLQuantizationType[fmt.upper()]))
    return [QuantizedWeight(fmt, made[(o, i)].clone(), o, i) for o, i in shapes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128])
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--isa", nargs="+", default=None,
                    help="copies of the quantized matmul to time (avx512_vnni, avx2, baseline); default: the best")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other processes on the machine: a busy one slows every layout, unevenly
    from modelchip.runtime.backends.cpu import CPUBackend, PackedLinear

    backend = CPUBackend()
    kernels = backend.kernels
    if kernels is None:
        raise SystemExit(f"bench_quant_linear: the kernels are not built here ({backend.kernels_missing})")
    isas = args.isa or [kernels.best_quant_isa]
    shapes = weight_shapes(args.model)
    g = torch.Generator().manual_seed(0)
    dense = [torch.randn(o, i, generator=g) / i ** 0.5 for o, i in shapes]
    layouts: dict[str, tuple[list, torch.dtype, str]] = {}  # name -> (prepared weights, activation dtype, isa)
    nbytes: dict[str, int] = {}
    if kernels.has_linear_bf16:
        layouts["bf16_pairs"] = ([PackedLinear(kernels.pack_linear_bf16(w.bfloat16()), "bf16-pairs", w.shape[0])
                                  for w in dense], torch.bfloat16, "")
        nbytes["bf16_pairs"] = sum(w.numel() * 2 for w in dense)
    layouts["onednn_fp32"] = ([PackedLinear(torch.ops.mkldnn._reorder_linear_weight(w), "onednn", w.shape[0])
                               for w in dense], torch.float32, "")
    nbytes["onednn_fp32"] = sum(w.numel() * 4 for w in dense)
    del dense
    for n, fmt in enumerate(args.formats):
        weights = quantized(fmt, shapes, seed=n)
        prepared = [backend.prepare_linear(w) for w in weights]
        for isa in isas:
            layouts[f"{fmt}_{isa}"] = (prepared, torch.bfloat16, isa)
            nbytes[f"{fmt}_{isa}"] = sum(w.nbytes for w in weights)
        del weights
    assert not backend.fallbacks, backend.fallbacks  # every weight on the layout it is timed as
    best = kernels.best_quant_isa
    results = []
    for rows in args.rows:
        xs = {(i, dt): torch.randn(rows, i, generator=g).to(dt) for i in {i for _, i in shapes}
              for dt in (torch.float32, torch.bfloat16)}
        times: dict[str, list[float]] = {name: [] for name in layouts}
        for _ in range(args.repeat + 1):  # interleaved, so drift in the machine hits every layout alike
            for name, (weights, dtype, isa) in layouts.items():
                kernels.set_quant_isa(isa or best)
                start = time.perf_counter()
                for w, (_, i) in zip(weights, shapes, strict=True):
                    backend.linear(xs[i, dtype], w)
                times[name].append(time.perf_counter() - start)
        kernels.set_quant_isa(best)
        ms = {name: statistics.median(t[1:]) * 1e3 for name, t in times.items()}  # the first round warms up
        ref = ms.get("bf16_pairs", ms["onednn_fp32"])
        results.append({"rows": rows, "ms": {k: round(v, 3) for k, v in ms.items()},
                        "weights_gb_s": {k: round(nbytes[k] / v / 1e6, 1) for k, v in ms.items()},
                        "speedup_vs_bf16_pairs": {k: round(ref / v, 2) for k, v in ms.items()}})
        print(f"rows {rows}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), file=sys.stderr)
    print(json.dumps({
        "benchmark": "quantized-linear", "model": args.model, "matmuls": len(shapes), "threads": args.threads,
        "weight_mb": {k: round(v / 1e6, 1) for k, v in nbytes.items()},
        "copy_bandwidth": bandwidth(args.threads),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "machine": machine() + f", torch {torch.__version__}", "quant_isa_best": best,
        "date": time.strftime("%Y-%m-%d %H:%M"), "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
