"""MI300X-class kernels from their published benchmarks, each against hand arithmetic: a per-channel FP8 GEMM runs
at the efficiency AITER's tuned rowwise kernel reaches on Llama's shapes (AITER PR #1092's tuned table), not at the
block-scaled kernel's, and a tensor-parallel all-reduce takes its measured time at its message size and group size:
vLLM's custom all-reduce at TP4 (vLLM PR #19744), RCCL's at TP8 (AMD's rccl-tests run in the ROCm blog on RCCL and
xGMI)."""

import statistics

import pytest

from modelchip.cost import kernel_model as km
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.efficiency import defaults
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.errors import ModelchipError
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip
from modelchip.spec.kernels import parse

MI300X_FP8, MI300X_BW = 2.6149e15, 5.3e12  # AMD MI300 documentation: dense FP8 peak, HBM bandwidth
FP8 = Precision(weight="fp8", kv="fp8")

# AITER PR #1092 head 035725098d, aiter/configs/a8w8_tuned_gemm.csv, cu_num 304, M = 1024: (N, K, us) of every
# shape whose roofline time is above the per-call floor (the small TP8 shards 1280 x 8192 and 8192 x 1024 and
# 192 x 1024 are floor-bound and left out)
ROWWISE_M1024 = [
    (2560, 8192, 72.1886), (7168, 8192, 152.5955), (8192, 2048, 52.6968), (8192, 3584, 84.354),
    (8192, 7168, 149.9654), (8192, 8192, 170.7549), (8192, 28672, 574.4434), (10240, 8192, 201.4766),
    (14336, 8192, 266.5684), (57344, 8192, 971.2064), (2304, 16384, 123.5471), (4608, 16384, 187.1264),
    (9216, 16384, 350.0844), (13312, 16384, 500.9414), (16384, 2048, 94.4094), (16384, 4096, 165.8875),
    (16384, 6656, 245.5713), (16384, 8192, 305.3856), (16384, 13312, 468.4647), (16384, 26624, 888.5677),
    (26624, 16384, 970.0344), (53248, 16384, 1941.7791),
]


def _roofline_eff(m: int, rows) -> float:
    """Median over shapes of ideal time / measured time (FP8 in, BF16 out)."""
    return statistics.median(max(2 * m * n * k / MI300X_FP8, (n * k + m * k + 2 * m * n) / MI300X_BW) / (us * 1e-6)
                             for n, k, us in rows)


def _eval(model: str, chip: str = "mi300x", **kw):
    c = get_chip(chip)
    precision = kw.pop("precision", FP8)
    base = dict(chip=c, chips=1, strategy="tp", batch=1, context=600, precision=precision, system=system_for(c))
    cost = model_cost(load_model(model), precision)
    return cost, evaluate(cost, Deployment(**{**base, **kw}))


def test_fp8_gemms_take_the_benchmarks_of_their_weight_format():
    mi300x, h100 = get_chip("mi300x"), get_chip("h100")

    def ids(chip, **kw):
        return {t.id for t in km.gemm_tables(chip, "fp8", False, **kw)}

    # per-channel (or per-tensor) FP8 weights, as Llama's FP8 checkpoints ship, run the rowwise/hipBLASLt kernels
    assert ids(mi300x, weight="fp8") == {"hipblaslt-fp8-mi300x-405b", "aiter-fp8-rowwise-mi300x-llama"}
    # 128 x 128 block-scaled weights (DeepSeek-V3) run the block-scaled kernel
    assert ids(mi300x, weight="fp8_block") == {"aiter-fp8-blockscale-mi300"}
    # unstated: every FP8 benchmark of the architecture, as before
    assert len(ids(mi300x)) == 3
    # an architecture whose tables state no format keeps them all
    assert ids(h100, weight="fp8") == ids(h100)
    # leaving AITER's PR out leaves hipBLASLt's table for per-channel weights
    assert ids(mi300x, weight="fp8", exclude=frozenset({"aiter-pr-1092"})) == {"hipblaslt-fp8-mi300x-405b"}


def test_rowwise_rows_are_the_published_kernel_times():
    table = next(t for t in km.gemm_tables(get_chip("mi300x"), "fp8", False, weight="fp8")
                 if t.id == "aiter-fp8-rowwise-mi300x-llama")
    rows = {(int(m), int(n), int(k)): (tf, gb) for m, n, k, tf, gb in table.rows}
    # 70B's TP1 gate_up at M = 1024: 971.2064 us
    t = 971.2064e-6
    tf, gb = rows[(1024, 57344, 8192)]
    assert tf == pytest.approx(2 * 1024 * 57344 * 8192 / t / 1e12, rel=1e-4)  # 990.6 TFLOPS, 38% of peak
    assert gb == pytest.approx((57344 * 8192 + 1024 * 8192 + 2 * 1024 * 57344) / t / 1e9, rel=1e-4)
    # 70B's TP8 QKV shard at M = 1 (15.78 us) streams its 10.5 MB in 2.0 us: the floor's row, left out
    assert (1, 1280, 8192) not in rows
    assert len(table.rows) == 240  # of 288 published


def test_tp1_decode_ffn_runs_at_the_rowwise_kernels_median_efficiency():
    # 1024 sequences of Llama 2 70B on one MI300X (MLPerf's TP1 setup): the FFN matmuls have M = 1024, where
    # only AITER's rowwise table has rows (hipBLASLt's stop at M = 32)
    eff = _roofline_eff(1024, ROWWISE_M1024)
    assert 0.30 < eff < 0.34  # against 20% for the block-scaled kernel at this M
    assert km.gemm_efficiency(get_chip("mi300x"), "fp8", 1024, weight="fp8") == pytest.approx(eff, rel=1e-3)
    cost, p = _eval("llama-2-70b", batch=1024)
    ffn = 80 * 3 * 8192 * 28672  # gate, up and down of 80 layers
    hand = max(2 * 1024 * ffn / MI300X_FP8, ffn / MI300X_BW) / eff
    assert p.breakdown_ms["dense_ffn"] == pytest.approx(hand * 1e3, rel=1e-3)
    # block-scaled weights of the same model take the block-scaled kernel's lower efficiency
    block = Precision(weight="fp8_block", kv="fp8")
    assert _eval("llama-2-70b", batch=1024, precision=block)[1].breakdown_ms["dense_ffn"] > 1.4 * p.breakdown_ms[
        "dense_ffn"]


def test_tp4_all_reduce_takes_the_measured_kernel_time_for_its_size():
    latency = 7.2e-6  # the catalog's small-message time (the same table's 2 KB row, 7.18 us)
    fp8 = Precision(weight="fp8", kv="bf16")
    # Llama 3.1 70B at TP4, 32 sequences per GPU: 128 tokens of 8,192 BF16 values = 2 MiB per all-reduce,
    # a measured size: 36.64 us, 2 per layer over 80 layers
    _, p = _eval("llama-3.1-70b", chips=4, batch=32, precision=fp8)
    b = p.breakdown_ms
    assert b["collective_latency"] == pytest.approx(160 * latency * 1e3, rel=1e-9)
    assert b["communication"] + b["collective_latency"] == pytest.approx(160 * 36.64e-3, rel=1e-9)
    # 24 tokens = 384 KiB, between the 256 KiB (14.39 us) and 512 KiB (14.65 us) rows: linear in log size
    _, p = _eval("llama-3.1-70b", chips=4, batch=6, precision=fp8)
    per_call = 14.39 + (14.65 - 14.39) * 0.5849625007  # log2(1.5)
    total = p.breakdown_ms["communication"] + p.breakdown_ms["collective_latency"]
    assert total == pytest.approx(160 * per_call * 1e-3, rel=1e-6)
    up = get_chip("mi300x").scale_up.usable_bandwidth.value  # 315 GB/s, TransferBench in AMD's xGMI blog

    def link(group: int, nbytes: float) -> float:  # ring: 2 (n-1)/n of the message leaves each GPU
        return 2 * nbytes * (group - 1) / group / up

    # a 2,048-token prefill at TP4 sends 32 MiB per all-reduce, beyond the 16 MiB the table measured: bytes over
    # the link at its measured usable bandwidth
    _, p = _eval("llama-3.1-70b", chips=4, batch=1 / 4, phase="prefill", prompt_len=2048)
    assert p.breakdown_ms["communication"] == pytest.approx(160 * link(4, 2048 * 8192 * 2) * 1e3, rel=1e-9)
    # TP2 has no table (the mesh gives a pair one link), nor has Hopper: bytes over the link there
    _, p = _eval("llama-3.1-70b", chips=2, batch=64, precision=fp8)
    assert p.breakdown_ms["communication"] == pytest.approx(160 * link(2, 2 ** 21) * 1e3, rel=1e-9)
    assert km.all_reduce_time(("hopper/scale-up",), 4, 2 ** 21) is None
    # leaving vLLM's PR out removes both the table and the latency it gave
    assert km.all_reduce_time(("cdna3/scale-up",), 4, 2 ** 21, frozenset({"vllm-pr-19744"})) is None


def test_tp8_all_reduce_takes_rccls_measured_time_with_or_without_graphs():
    fp8 = Precision(weight="fp8", kv="bf16")

    def per_call_us(**kw) -> float:
        b = _eval("llama-3.1-70b", chips=8, precision=fp8, **kw)[1].breakdown_ms
        return (b["communication"] + b["collective_latency"]) / 160 * 1e3

    # AMD's rccl-tests run on 8 x MI300X: 2 MiB (16 sequences per GPU, 128 tokens) in 35.03 us with graph
    # capture, 34.81 us without; 256 KiB (16 tokens) in 10.26 us and 16.87 us
    assert per_call_us(batch=16) == pytest.approx(35.03, rel=1e-9)
    assert per_call_us(batch=16, graphs=False) == pytest.approx(34.81, rel=1e-9)
    assert per_call_us(batch=2) == pytest.approx(10.26, rel=1e-9)
    assert per_call_us(batch=2, graphs=False) == pytest.approx(16.87, rel=1e-9)
    # a 2,048-token prefill of 32 MiB per all-reduce: between the 32 MiB row (243.4 us) and the 64 MiB one
    assert per_call_us(batch=1 / 8, phase="prefill", prompt_len=2048) == pytest.approx(243.4, rel=1e-9)
    # leaving the blog out (its RCCL table and its usable link bandwidth): bytes over the spec link at the
    # default efficiency, and the TP4 latency
    out = _eval("llama-3.1-70b", chips=8, batch=16, precision=fp8, exclude=frozenset({"rocm-blog-rccl-xgmi"}))[1]
    up = get_chip("mi300x").scale_up.bandwidth.value * defaults().scale_up
    assert out.breakdown_ms["communication"] == pytest.approx(160 * 2 * 2 ** 21 * 7 / 8 / up * 1e3, rel=1e-9)


def test_bad_collective_tables_are_refused():
    good = {"id": "x", "op": "all_reduce", "applies": ["cdna3/scale-up"], "ranks": 4, "source": "s", "tag": "P",
            "source_id": "s", "rows": [[1024, 7.0], [2048, 8.0]]}
    assert parse({"collective": [good]}).collective[0].rows == ((1024.0, 7.0), (2048.0, 8.0))
    for bad in ({"rows": [[1024, 7.0]]}, {"rows": [[1024, -1.0], [2048, 8.0]]}, {"ranks": 1},
                {"op": "all_gather"}):
        with pytest.raises(ModelchipError, match="collective"):
            parse({"collective": [{**good, **bad}]})
