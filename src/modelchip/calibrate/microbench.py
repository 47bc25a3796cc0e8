"""Microbenchmarks of a backend on one device: GEMM throughput, memory bandwidth, weight streaming,
attention decode, and the fixed cost of calling an op. Each returns plain numbers; timing is wall clock over
repeated calls after a warm-up, keeping the best of a few rounds (the least disturbed)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from modelchip.runtime.contract import AttentionMetadata


def best_time(fn: Callable[[], object], repeat: int = 5, number: int = 3, sync: Callable[[], None] = lambda: None,
              budget_s: float = 2.0) -> float:
    """Best mean seconds per call of `fn` over `repeat` rounds of `number` calls (stops early past budget)."""
    fn()
    sync()
    best, start = float("inf"), time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t) / number)
        if time.perf_counter() - start > budget_s:
            break
    return best


def gemm(ops, m: int, k: int, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of ops.linear on x [m, k] and a weight [n, k], prepared as the model prepares its weights."""
    x = torch.randn(m, k, dtype=dtype, device=ops.device)
    w = ops.prepare_linear(torch.randn(n, k, dtype=dtype, device=ops.device))
    seconds = best_time(lambda: ops.linear(x, w))
    return 2.0 * m * k * n / seconds


def read_bandwidth(device: torch.device, nbytes: int = 256 << 20) -> float:
    """Bytes/s of reading a large tensor once (a sum): decode is dominated by reads of weights and cache."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    seconds = best_time(lambda: src.sum(), repeat=5, number=2)
    return nbytes / seconds


def weight_streaming(ops, k: int, n: int, dtype: torch.dtype, pool_bytes: int = 512 << 20, tokens: int = 1) -> float:
    """Bytes/s of weights read by `tokens`-row linears over a pool of [n, k] matrices larger than any cache, as
    a decode step reads each layer's weights once (a single matrix timed in a loop would sit in cache)."""
    x = torch.randn(tokens, k, dtype=dtype, device=ops.device)
    per = n * k * torch.finfo(dtype).bits // 8
    pool = [ops.prepare_linear(torch.randn(n, k, dtype=dtype, device=ops.device))
            for _ in range(max(1, pool_bytes // per))]

    def sweep() -> None:
        for w in pool:
            ops.linear(x, w)

    return len(pool) * per / best_time(sweep, repeat=3, number=1)


def op_overhead(ops, width: int = 576) -> float:
    """Seconds of fixed cost per call of the small decode-time ops (norm, rotary, activation, cache write)
    on one token of a `width`-wide model: at that size the work itself is negligible."""
    dev = ops.device
    x, w = torch.randn(1, width, device=dev), torch.ones(width, device=dev)
    heads = torch.randn(1, width // 64, 64, device=dev)
    cos, sin = torch.ones(1, 32, device=dev), torch.zeros(1, 32, device=dev)
    gate_up = torch.randn(1, 2 * width, device=dev)
    cache = torch.zeros(4, 16, width // 64, 64, device=dev)
    slot = torch.zeros(1, dtype=torch.long, device=dev)
    calls = (lambda: ops.rms_norm(x, w, 1e-6), lambda: ops.rotary_embedding(heads, cos, sin),
             lambda: ops.silu_and_mul(gate_up), lambda: ops.write_kv(cache, heads, slot))
    return sum(best_time(c, repeat=5, number=100) for c in calls) / len(calls)


def attention_decode(ops, seqs: int, context: int, heads: int = 8, kv_heads: int = 2, head_dim: int = 64,
                     block: int = 16, dtype: torch.dtype = torch.float32) -> float:
    """Seconds for one decode step of paged attention over `seqs` sequences of `context` cached tokens."""
    blocks_per_seq = -(-context // block)
    dev = ops.device
    k = torch.randn(seqs * blocks_per_seq, block, kv_heads, head_dim, dtype=dtype, device=dev)
    v = torch.randn_like(k)
    q = torch.randn(seqs, heads, head_dim, dtype=dtype, device=dev)
    meta = AttentionMetadata(
        query_start_loc=torch.arange(seqs + 1, device=dev), context_lens=torch.full((seqs,), context, device=dev),
        block_tables=torch.arange(seqs * blocks_per_seq, device=dev).view(seqs, blocks_per_seq),
        slot_mapping=torch.zeros(seqs, dtype=torch.long, device=dev), block_size=block)
    return best_time(lambda: ops.paged_attention(q, k, v, meta, head_dim ** -0.5), number=3)
