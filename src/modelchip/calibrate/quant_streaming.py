"""Weight streaming per packed format: a backend's own `prepare_linear`/`linear` over a pool of weights in
each quantized format it takes (GGUF Q8_0/Q4_0/Q4_1/Q4_K/Q6_K, block-scaled FP8), at decode row counts.

A packed kernel's speed is set by its unpacking arithmetic as much as by the bytes it reads, so the float
weight-streaming rate says little about it: the rate is measured per format, as bytes per second of the
packed bytes (scales included, what `spec.dtypes` counts and the planner prices) and as seconds per call.
Where a backend does not keep a format packed (dequantizes it at prepare, or unpacks it on every call), the
rate is of what it keeps, still per packed byte, and the table says what was kept and why."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import torch

from modelchip.calibrate import microbench
from modelchip.cost.streaming import PACKED
from modelchip.runtime.quant import QuantizedWeight

ROWS = (1, 2, 4, 8, 16)  # decode: one row per sequence in the batch
# [out, in]: as many weights as SmolLM2's average decode matmul (its four per layer hold 3.5 M weights); `in` a
# multiple of every format's block (256 for the K-quants)
SHAPE = (576, 1536)
POOL_BYTES = 128 << 20  # packed bytes, 4x a Zen 4 CCD's 32 MB L3, as a decode step streams each layer once
SWEEP_BUDGET_S = 0.05  # a backend that unpacks per call gets a smaller pool: one sweep stays about this long


def _pool_weight(fmt: str, dtype: torch.dtype) -> QuantizedWeight:
    from modelchip.conformance.quant_cases import quantized_weight

    return quantized_weight(fmt, *SHAPE, seed=0, dtype=dtype)


def _prepare(ops, w: QuantizedWeight) -> tuple[object, list[str]]:
    """(the backend's handle for `w`, the fallback reasons preparing it counted: on the contract's wrapper or,
    as the cpu backend counts a weight it dequantizes, on the backend itself)."""
    prepare = getattr(ops, "prepare_linear", None)
    counters = {id(c): c for c in (getattr(ops, "fallbacks", None), getattr(getattr(ops, "backend", None),
                                                                           "fallbacks", None))
                if isinstance(c, Counter)}.values()
    before = sum((Counter(c) for c in counters), Counter())
    handle = prepare(w) if prepare else w
    after = sum((Counter(c) for c in counters), Counter())
    return handle, sorted(after - before)


def measure_format(ops, fmt: str, dtype: torch.dtype = torch.bfloat16, rows: tuple[int, ...] = ROWS,
                   pool_bytes: int = POOL_BYTES) -> dict:
    """One format's entry of the profile's `weight_streaming.formats` table (see cost/streaming.py)."""
    base = _pool_weight(fmt, dtype)
    first, reasons = _prepare(ops, base)
    if isinstance(first, QuantizedWeight):
        kept, note = "unpacked per call", "prepare_linear kept the packed weight; linear unpacks it on every call"
    elif reasons:
        kept, note = "dequantized at prepare", "; ".join(reasons)
    else:
        kept, note = "packed", ""
    # each matrix its own copy of the bytes, so a sweep reads from memory, not from the cache
    count = max(1, pool_bytes // base.nbytes)
    if kept == "unpacked per call":  # unpacking, not reading, is its cost: a pool that sweeps in SWEEP_BUDGET_S
        x1 = torch.randn(1, SHAPE[1], dtype=dtype, device=ops.device)
        one = microbench.median_time(lambda: ops.linear(x1, first), repeat=5, number=1, budget_s=0.5)
        count = max(1, min(count, int(SWEEP_BUDGET_S / one)))
    pool = [first] + [_prepare(ops, _copy(base))[0] for _ in range(count - 1)]
    nbytes = count * base.nbytes
    rates, per_call = [], []
    for m in rows:
        x = torch.randn(m, SHAPE[1], dtype=dtype, device=ops.device)

        def sweep(x=x) -> None:
            for w in pool:
                ops.linear(x, w)

        seconds = microbench.median_time(sweep, repeat=5, number=1, name=f"weight streaming {fmt} {m} rows")
        rates.append([m, nbytes / seconds])
        per_call.append([m, seconds / count])
    return {"kept": kept, "note": note, "bits_per_weight": 8 * base.nbytes / (SHAPE[0] * SHAPE[1]),
            "pool_matrices": count, "bytes_per_s": rates, "seconds_per_call": per_call}


def _copy(w: QuantizedWeight) -> QuantizedWeight:
    return replace(w, data=w.data.clone(), scales=None if w.scales is None else w.scales.clone())


def measure(ops, dtype: torch.dtype = torch.bfloat16, progress=lambda message: None) -> dict:
    """The profile's `weight_streaming` section: every packed format the backend takes (its
    `quantized_formats`), measured at `ROWS` rows of `dtype` activations."""
    formats = [f for f in PACKED if f in getattr(ops, "quantized_formats", frozenset())]
    start = time.perf_counter()
    table = {}
    for fmt in formats:
        progress(f"weight streaming {fmt} ({', '.join(map(str, ROWS))} rows)")
        table[fmt] = measure_format(ops, fmt, dtype)
    return {"matrix": list(SHAPE), "activations": str(dtype).removeprefix("torch."), "rows": list(ROWS),
            "seconds": time.perf_counter() - start, "formats": table}
