"""Kernel efficiencies and fixed times looked up in the measured tables (spec/catalog/kernels.toml),
InferSim-style: a GEMM of M rows on a chip runs at the roofline efficiency its architecture's benchmark
measured at that M (log-interpolated between measured M, clamped at the ends), tensor-parallel-split experts at
the efficiency a whole fused MoE layer reached at their rows per expert, an attention kernel at the
fraction of peak and bandwidth its benchmark reached, and collectives pay their measured latency.

Every lookup takes `exclude`, a set of source ids left out (leave-one-source-out validation); a lookup that
finds nothing returns None, and the caller falls back to the scalar defaults of efficiency.toml.
"""

from __future__ import annotations

import math
import statistics
from functools import cache
from typing import NamedTuple

from modelchip.spec import dtypes
from modelchip.spec.chips import Chip, get_chip
from modelchip.spec.kernels import FusedMoeTable, GemmTable, kernel_catalog

NONE: frozenset[str] = frozenset()


def log_interp(points: list[tuple[float, float]], x: float) -> float:
    """y at x on a curve given at sorted xs, linear in log x between points, flat beyond the ends."""
    x0, y0 = points[0]
    if x <= x0:
        return y0
    for x1, y1 in points:  # walks the points pairwise without copying them (~100,000 calls a plan)
        if x <= x1:
            return y0 + (y1 - y0) * math.log(x / x0) / math.log(x1 / x0)
        x0, y0 = x1, y1
    return y0


def _curve(tables: tuple[GemmTable, ...], flop_bound: bool = False) -> list[tuple[float, float]]:
    key = (tuple(t.id for t in tables), flop_bound)
    if key not in _CURVES:  # keyed by ids: hashing the rows on every lookup would dominate a plan
        _CURVES[key] = _measure_curve(tables, flop_bound)
    return _CURVES[key]


_CURVES: dict[tuple[tuple[str, ...], bool], list[tuple[float, float]]] = {}


def _measure_curve(tables: tuple[GemmTable, ...], flop_bound: bool = False) -> list[tuple[float, float]]:
    """(M, roofline efficiency) per measured M: for each row the achieved fraction of its measuring chip's
    peak or bandwidth, whichever bounds the shape (a roofline-bound kernel reaches one of them), the median over
    every shape measured at that M in the architecture's benchmarks. `flop_bound`: only the rows bound by their
    FLOPs (fraction of peak above fraction of bandwidth), as fractions of peak; a benchmark's rows at its largest
    M then also vote at every larger M of the others (see `_votes_at`)."""
    per_table = _table_votes(tables, flop_bound)
    ms = sorted({m for votes in per_table for m in votes})
    by_m = _votes_at(per_table, ms, carry_up=flop_bound)
    return [(m, statistics.median(by_m[m])) for m in ms]


def _table_votes(tables: tuple[GemmTable, ...], flop_bound: bool) -> list[dict[float, list[float]]]:
    """Per benchmark, its rows' efficiencies by M (see `_measure_curve`)."""
    out = []
    for table in tables:
        ref = get_chip(table.measured_on)
        peak, bw = ref.peak(table.dtype), ref.bandwidth
        votes: dict[float, list[float]] = {}
        for m, _n, _k, tflops, gbps in table.rows:
            compute, memory = tflops * 1e12 / peak, gbps * 1e9 / bw
            if flop_bound and compute <= memory:
                continue
            votes.setdefault(m, []).append(min(1.0, compute if flop_bound else max(compute, memory)))
        if votes:
            out.append(votes)
    return out


def _votes_at(tables: list[dict[float, list[float]]], ms: list[float], carry_up: bool) -> dict[float, list[float]]:
    """The rows voting at each M: a benchmark's own rows at that M, and with `carry_up` (FLOP-bound rows) above
    its largest measured M its rows there. A shape's FLOP-bound fraction of peak does not fall as M grows
    (vLLM's NVFP4 6144 x 4096: 2,221, 2,613, 2,948, 3,025, 3,039 TFLOPS from M = 1,024 to 16,384), so a
    benchmark that stops at a smaller M still says what its shape reaches; leaving it out made the median jump
    with whichever benchmarks happen to measure at that M (NVFP4 on Blackwell: 47% of peak at M = 8,192 with
    TorchAO's 8192^3 row, 34% at 16,384 where only vLLM's small shape is measured). Below a benchmark's smallest
    M it does not vote: efficiency falls with fewer rows."""
    out: dict[float, list[float]] = {}
    for m in ms:
        for votes in tables:
            top = max(votes)
            if m in votes:
                out.setdefault(m, []).extend(votes[m])
            elif carry_up and m > top:
                out.setdefault(m, []).extend(votes[top])
    return out


# Engines whose low-precision linear layers read activations the kernel before them already wrote quantized, so
# a GEMM's time is the call alone: TensorRT-LLM's RMSNorm writes NVFP4 with its scales when the next linear is
# NVFP4 (tensorrt_llm/_torch/modules/rms_norm.py, `quantize_type="nvfp4"`, "Enable fused NVFP4 quantization";
# https://github.com/NVIDIA/TensorRT-LLM). vLLM and SGLang quantize in front of the GEMM (vLLM's
# `scaled_fp4_quant` in its NVFP4 linear), which the "included" benchmarks time.
PREQUANTIZED_ENGINES = frozenset({"tensorrt-llm"})


def gemm_tables(chip: Chip, dtype: str, grouped: bool, exclude: frozenset[str] = NONE,
                weight: str = "", engine: str = "") -> tuple[GemmTable, ...]:
    """The benchmarks that cover this chip's architecture and compute dtype: grouped MoE GEMMs take the grouped
    benchmarks where there are any, else the dense ones; of those, the ones measured on the weight's own format
    (`weight`, e.g. per-channel "fp8" or block-scaled "fp8_block") where any is, else all of them. A benchmark
    timed with the activations' quantization in the call stands for engines that quantize in front of the GEMM,
    one timed without it for `PREQUANTIZED_ENGINES`; one that does not say stands for both."""
    return _gemm_tables(chip.arch, dtypes.canonical(dtype), grouped, exclude,
                        dtypes.canonical(weight) if weight else "", engine in PREQUANTIZED_ENGINES)


@cache
def _gemm_tables(arch: str, dtype: str, grouped: bool, exclude: frozenset[str],
                 weight: str = "", prequantized: bool = False) -> tuple[GemmTable, ...]:
    other = "included" if prequantized else "excluded"
    tables = [t for t in kernel_catalog().gemm if arch and arch in t.arch and t.dtype == dtype
              and t.source_id not in exclude and not t.weight_sweep and t.activation_quant != other]
    same = tuple(t for t in tables if t.grouped == grouped) or tuple(tables)
    # per-channel and block-scaled FP8 run different kernels: on MI300X at M 1,024 AITER's rowwise GEMM reaches
    # 32% of FP8 peak in its median Llama shape, its block-scaled one 20% at DeepSeek's
    formatted = tuple(t for t in same if weight and t.weight == weight)
    return formatted or same


def gemm_efficiency(chip: Chip, dtype: str, m: float, grouped: bool = False,
                    exclude: frozenset[str] = NONE, weight: str = "", engine: str = "") -> float | None:
    """Roofline efficiency of an M-row GEMM: max(FLOPs / peak, bytes / bandwidth) / this = its time. `weight`:
    the weight's storage format, which picks the benchmarks of that format where there are any; `engine`: the
    serving engine, which says whether the activations' quantization is in the call (`gemm_tables`)."""
    curve = _gemm_curve(chip.arch, dtype, grouped, exclude, weight, engine in PREQUANTIZED_ENGINES)
    return log_interp(curve, max(m, 1.0)) if curve is not None else None


@cache  # a plan asks ~130,000 times for a handful of curves: the tables and their curve are picked once each
def _gemm_curve(arch: str, dtype: str, grouped: bool, exclude: frozenset[str], weight: str,
                prequantized: bool) -> list[tuple[float, float]] | None:
    """`gemm_efficiency`'s curve (None: no benchmark covers the architecture and dtype)."""
    tables = _gemm_tables(arch, dtypes.canonical(dtype), grouped, exclude, dtypes.canonical(weight) if weight else "",
                          prequantized)
    return _curve(tables) if tables else None


class GemmCurves(NamedTuple):
    """The measured curves a GEMM of one architecture, compute dtype, grouping, weight format and engine is
    priced on (`gemm_curves`): `gemm_efficiency`'s median curve and `gemm_split`'s (compute curve, streaming
    curve), either None where it does not apply. A plan prices ~130,000 GEMMs on a few dozen of these."""
    median: list[tuple[float, float]] | None
    split: tuple[list[tuple[float, float]], list[tuple[float, float]]] | None

    def efficiency(self, m: float) -> float | None:
        """`gemm_efficiency` at M rows."""
        return log_interp(self.median, max(m, 1.0)) if self.median is not None else None

    def split_at(self, m: float) -> tuple[float, list[tuple[float, float]]] | None:
        """`gemm_split` at M rows."""
        if self.split is None:
            return None
        compute, sweep = self.split
        return log_interp(compute, max(m, 1.0)), sweep


def gemm_curves(chip: Chip, dtype: str, grouped: bool = False, exclude: frozenset[str] = NONE, weight: str = "",
                engine: str = "") -> GemmCurves:
    """`gemm_efficiency`'s and `gemm_split`'s curves for these arguments, to be asked at many M."""
    prequantized = engine in PREQUANTIZED_ENGINES
    return GemmCurves(_gemm_curve(chip.arch, dtype, grouped, exclude, weight, prequantized),
                      _split_curves(chip.arch, dtype, exclude, grouped, prequantized))


def fused_moe_curve(table: FusedMoeTable) -> list[tuple[float, float]]:
    """(M, roofline efficiency) per measured token count of a fused MoE layer, M = token-expert pairs per expert
    hit (routing balanced), the efficiency its measured time gives against the measuring chip's roofline of
    the routed-expert GEMMs: FLOPs 2 x pairs x hidden x 3 x shard width, bytes the weights of the experts hit."""
    ref = get_chip(table.measured_on)
    peak, bw = ref.peak(table.dtype), ref.bandwidth
    params = 3 * table.hidden * table.shard_width  # gate, up and down of one expert's shard
    out = []
    for tokens, us in table.rows:
        hit = table.experts * (1.0 - (1.0 - table.top_k / table.experts) ** tokens)
        pairs = tokens * table.top_k
        roofline = max(2 * pairs * params / peak, hit * params * dtypes.nbytes(table.dtype) / bw)
        out.append((pairs / hit, min(1.0, roofline / (us * 1e-6))))
    return sorted(out)


def fused_moe_efficiency(chip: Chip, dtype: str, m: float, shard_width: float,
                         exclude: frozenset[str] = NONE, engine: str = "") -> float | None:
    """Roofline efficiency of tensor-parallel-split routed experts run as one fused MoE kernel, at M rows per
    expert hit: the measured layer of the chip's architecture and dtype, run by this `engine` (a table naming
    engines stands for those only), whose shard width is nearest (in ratio) to this one's, log-interpolated in
    M and flat below its first row; None where none is measured. Past its last row a table holds flat only
    where that row was bound by its FLOPs: a layer still streaming its weights at its largest M (TensorRT-LLM's
    TRTLLM-Gen table stops at 12 rows per expert) says nothing of the compute-bound rate beyond, and the grouped
    GEMM tables price those M instead."""
    found = _fused_moe_curve(chip.arch, dtypes.canonical(dtype), shard_width, exclude, engine)
    if not found:
        return None
    curve, carries = found
    m = max(m, 1.0)
    if m > curve[-1][0] and not carries:
        return None
    return log_interp(curve, m)


@cache
def _fused_moe_curve(arch: str, dtype: str, shard_width: float, exclude: frozenset[str],
                     engine: str = "") -> tuple[tuple[tuple[float, float], ...], bool] | None:
    """(curve, whether its last row was FLOP-bound) of the nearest-width table `fused_moe_efficiency` uses."""
    tables = [t for t in kernel_catalog().fused_moe
              if arch and arch in t.arch and t.dtype == dtype and t.source_id not in exclude
              and (not t.engines or engine in t.engines)]
    if not tables:
        return None
    near = min(tables, key=lambda t: abs(math.log(t.shard_width / max(shard_width, 1.0))))
    return tuple(fused_moe_curve(near)), _last_row_flop_bound(near)


def _last_row_flop_bound(table: FusedMoeTable) -> bool:
    """Whether the table's largest token count is bound by its FLOPs on the measuring chip's roofline."""
    ref = get_chip(table.measured_on)
    tokens = table.rows[-1][0]
    params = 3 * table.hidden * table.shard_width
    hit = table.experts * (1.0 - (1.0 - table.top_k / table.experts) ** tokens)
    return 2 * tokens * table.top_k * params / ref.peak(table.dtype) > \
        hit * params * dtypes.nbytes(table.dtype) / ref.bandwidth


def gemm_split(chip: Chip, dtype: str, m: float, exclude: frozenset[str] = NONE,
               grouped: bool = False, engine: str = "") -> tuple[float, list[tuple[float, float]]] | None:
    """(compute efficiency at M, streaming curve) of a dense GEMM where the architecture has a weight-size sweep
    for this compute dtype beside its per-M benchmarks (None elsewhere: the median curve of `gemm_efficiency`
    applies). A bandwidth-bound call takes the same time at any M (vLLM's NVFP4 runs: 13.4-14.6 us from M = 1
    to 256), so what sets it is its weight size, which the sweep measures: the curve is [(weight elements N x K,
    fraction of bandwidth)], see `stream_efficiency`. The compute side is the median fraction of peak of the
    benchmarks' FLOP-bound rows at that M, each benchmark's largest-M rows voting above it (log-interpolated,
    flat beyond the measured M), so a small shape's bandwidth-bound rows do not stand in for a large call's
    compute; without such rows, the median curve.

    `grouped` (routed experts): only where no grouped benchmark covers the architecture and dtype, so that the
    experts would otherwise read the dense per-M curve. That curve's small-M rows were measured on one
    projection's weights (vLLM's 6144 x 4096, 14 MB in NVFP4), but a grouped GEMM runs every expert hit in one
    launch and streams the sum of their weights, so its streaming rate is the sweep's at that sum (the caller's
    `calls`). A grouped benchmark measures that launch itself and keeps its per-M curve."""
    curves = _split_curves(chip.arch, dtype, exclude, grouped, engine in PREQUANTIZED_ENGINES)
    if curves is None:
        return None
    compute, sweep = curves
    return log_interp(compute, max(m, 1.0)), sweep


@cache  # asked ~70,000 times a plan, for a handful of architectures and dtypes
def _split_curves(arch: str, dtype: str, exclude: frozenset[str], grouped: bool,
                  prequantized: bool) -> tuple[list[tuple[float, float]], list[tuple[float, float]]] | None:
    """`gemm_split`'s (compute curve by M, streaming curve by weight size), or None where it does not apply."""
    dtype = dtypes.canonical(dtype)
    if grouped and any(t.grouped for t in _gemm_tables(arch, dtype, True, exclude, "", prequantized)):
        return None
    sweep = _sweep_curve(arch, dtype, exclude)
    tables = _gemm_tables(arch, dtype, False, exclude, "", prequantized)
    if not (sweep and tables):
        return None
    return _curve(tables, flop_bound=True) or _curve(tables), sweep


def stream_efficiency(curve: list[tuple[float, float]], weights: float) -> float:
    """Fraction of bandwidth a call of `weights` elements streams at: linear in log size between the swept
    sizes, the nearest swept size's beyond them."""
    return log_interp(curve, max(weights, 1.0))


@cache
def _sweep_curve(arch: str, dtype: str, exclude: frozenset[str]) -> list[tuple[float, float]]:
    """(weight elements, fraction of the measuring chip's bandwidth) per swept size, the median per size."""
    by_size: dict[float, list[float]] = {}
    for t in kernel_catalog().gemm:
        if t.weight_sweep and arch and arch in t.arch and t.dtype == dtype and t.source_id not in exclude:
            bw = get_chip(t.measured_on).bandwidth
            for _m, n, k, _tflops, gbps in t.rows:
                by_size.setdefault(n * k, []).append(min(1.0, gbps * 1e9 / bw))
    return [(w, statistics.median(v)) for w, v in sorted(by_size.items())]


def attention_efficiency(chip: Chip, phase: str,
                         exclude: frozenset[str] = NONE) -> tuple[float | None, float | None] | None:
    """(fraction of BF16 peak, fraction of bandwidth) the architecture's measured attention kernel reaches;
    either is None where the benchmark does not measure it."""
    return _attention_fractions(chip.arch, phase, exclude)


@cache  # asked once per costed step (~25,000 times a plan)
def _attention_fractions(arch: str, phase: str,
                         exclude: frozenset[str]) -> tuple[float | None, float | None] | None:
    for fig in kernel_catalog().attention:
        if arch and arch in fig.arch and fig.phase == phase and fig.source_id not in exclude:
            ref = get_chip(fig.measured_on)
            compute = fig.compute_fraction or (fig.tflops * 1e12 / ref.peak("bf16") if fig.tflops else None)
            memory = fig.memory_fraction or (fig.gbps * 1e9 / ref.bandwidth if fig.gbps else None)
            return (min(1.0, compute) if compute else None), (min(1.0, memory) if memory else None)
    return None


@cache  # the catalog is read once per process; a plan asks the same few questions ~200,000 times
def fixed(name: str, keys: tuple[str, ...], exclude: frozenset[str] = NONE, ranks: int = 0) -> float | None:
    """The first catalogued figure `name` that applies to one of `keys` (an architecture, a link class), in
    the order of `keys`, at `ranks` ranks (figures measured at scale apply from their `min_ranks` up); None
    where nothing is measured."""
    figs = [f for f in kernel_catalog().fixed
            if f.name == name and f.source_id not in exclude and ranks >= f.min_ranks]
    for key in keys:
        for f in figs:
            if key in f.applies:
                return f.value
    return None


def all_reduce_time(keys: tuple[str, ...], ranks: int, nbytes: float, exclude: frozenset[str] = NONE,
                    graphs: bool = True) -> float | None:
    """Seconds of one all-reduce of `nbytes` per rank among `ranks` ranks, from the first measured size table
    that applies to one of `keys` (a link class) at exactly that many ranks (on a mesh such as MI300X's the
    links a group uses grow with its size, so a time measured at one size of group holds for no other; the same
    kernel on MI300-series GPUs takes 49.7 us for 2 MB at TP2 and 36.6 us at TP4): log-interpolated between sizes,
    the smallest size's time below it. A table timed with or without graph capture holds for steps run the
    same way (`graphs`). None beyond the largest measured size or where nothing is measured: the caller
    charges bytes over the link."""
    for key in keys:
        for t in kernel_catalog().collective:
            if (key in t.applies and t.op == "all_reduce" and ranks == t.ranks and t.source_id not in exclude
                    and t.graphs in (None, graphs)):
                if nbytes > t.rows[-1][0]:
                    return None
                return log_interp([(b, us) for b, us in t.rows], max(nbytes, 1.0)) * 1e-6
    return None


def ep_low_latency(arch: str, ep: int, tokens: float, hidden: int, top_k: int,
                   exclude: frozenset[str] = NONE) -> tuple[float, float, bool] | None:
    """(dispatch s, combine s, whether bandwidth is included) of one MoE layer's low-latency all-to-all over
    `ep` ranks with `tokens` tokens per rank, from every benchmark of the architecture (the fastest published
    kernel at each EP size and token count, as engines pick it; log-interpolated between EP sizes).

    With two or more token counts the time is linear in tokens between them (a fixed latency plus a per-token
    part scaled by the message size hidden x top_k relative to the benchmark's). With one count of at least 32
    tokens, the time scales with tokens from it; with only a smaller count it is a latency floor, and the
    caller adds the bytes over the link (bandwidth not included)."""
    fit = _ep_latency_points(arch, ep, hidden, top_k, exclude)
    if fit is None:
        return None
    at, scale = fit
    if len(at) == 1:
        t0, d0, c0 = at[0]
        if t0 < 32:
            return d0 * 1e-6, c0 * 1e-6, False
        f = max(tokens, 1.0) / t0 * scale
        return d0 * f * 1e-6, c0 * f * 1e-6, True
    (t0, d0, c0), (t1, d1, c1) = at[0], at[-1]
    out = []
    for y0, y1 in ((d0, d1), (c0, c1)):
        slope = (y1 - y0) / (t1 - t0)
        out.append((max(y0 - slope * t0, 0.0) + slope * max(tokens, 1.0) * scale) * 1e-6)
    return out[0], out[1], True


@cache  # the benchmarks' points at one EP size: a plan asks for the same few sizes ~3,000 times
def _ep_latency_points(arch: str, ep: int, hidden: int, top_k: int, exclude: frozenset[str]
                       ) -> tuple[tuple[tuple[float, float, float], ...], float] | None:
    """`ep_low_latency`'s (token count, dispatch us, combine us) per measured token count at `ep` ranks, and the
    message-size scale of the per-token part; None where nothing applies."""
    rows: dict[tuple[float, float], tuple[float, float]] = {}
    tables = [t for t in kernel_catalog().ep_latency if arch in t.arch and t.source_id not in exclude]
    # one message size per architecture (spec/kernels.py checks it), so the per-token part scales as one
    scale = hidden * top_k / (tables[0].hidden * tables[0].top_k) if tables else 1.0
    for table in tables:
        for e, t, dispatch, combine in table.rows:
            old = rows.get((e, t), (float("inf"), float("inf")))
            rows[(e, t)] = (min(old[0], dispatch), min(old[1], combine))
    if not rows or ep <= 1:
        return None
    counts = sorted({t for _, t in rows})
    at = []
    for t in counts:
        pts = sorted((e, v) for (e, tt), v in rows.items() if tt == t and e > 0)
        d, c = ((log_interp([(e, v[0]) for e, v in pts], ep), log_interp([(e, v[1]) for e, v in pts], ep))
                if pts else (float("inf"), float("inf")))
        # a benchmark that does not state its EP size holds at every size: the sizes that are stated move
        # these kernels little (CloudMatrix Table 6: dispatch 116-152 us from EP8 to EP256)
        unstated = rows.get((0.0, t))
        if unstated:
            d, c = min(d, unstated[0]), min(c, unstated[1])
        at.append((t, d, c))
    return tuple(at), scale

