"""A100 dense 16-bit GEMMs run at the efficiency cuBLAS reached on an A100 80GB in LLMCompass's measured FP16
matmul sweep (ISCA 2024 artifact, ae/figure5/ab/real_hardware/matmul_A100.csv), checked against hand arithmetic."""

import pytest

from modelchip.cost import kernel_model as km
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

PEAK, BW = 312e12, 2.039e12  # A100 datasheet: 312 TFLOPS BF16/FP16 dense, 2.039 TB/s


def _eff(m, n, k, ms):
    """The roofline fraction one published row reaches: max(FLOPs / peak, bytes / bandwidth) over its time."""
    t = ms * 1e-3
    return max(2 * m * n * k / t / PEAK, 2 * (m * k + k * n + m * n) / t / BW)


def test_a100_bf16_gemms_take_llmcompass_table():
    a100 = get_chip("a100")
    assert [t.id for t in km.gemm_tables(a100, "bf16", False)] == ["cublas-fp16-a100-llmcompass"]
    # M = 128 at N = K = 12288: 0.2003 ms streams 308 MB of operands, 75.5% of bandwidth (compute 62%)
    e128 = _eff(128, 12288, 12288, 0.2003)
    assert e128 == pytest.approx(0.755, abs=1e-3)
    assert km.gemm_efficiency(a100, "bf16", 128) == pytest.approx(e128, rel=2e-3)
    # M = 2048: 2.3586 ms, FLOP-bound at 84% of peak
    assert km.gemm_efficiency(a100, "bf16", 2048) == pytest.approx(_eff(2048, 12288, 12288, 2.3586), rel=2e-3)
    # M = 8192 has five shapes (0.863 at 4096^2, 0.890, 0.920 at 12288^2, 0.922, 0.939): their median
    assert km.gemm_efficiency(a100, "bf16", 8192) == pytest.approx(_eff(8192, 12288, 12288, 8.6216), rel=2e-3)
    # below the smallest measured M the M = 64 row holds (0.19 ms: 1.61 TB/s, 78.8% of bandwidth)
    assert km.gemm_efficiency(a100, "bf16", 16) == pytest.approx(_eff(64, 12288, 12288, 0.19), rel=2e-3)
    # leaving the source out falls back to the scalar defaults
    assert km.gemm_efficiency(a100, "bf16", 128, exclude=frozenset({"llmcompass"})) is None


def test_llama7b_prefill_ffn_on_a100_is_its_roofline_over_the_measured_efficiency():
    a100 = get_chip("a100")
    precision = Precision(weight="bf16", kv="bf16")
    cost = model_cost(load_model("llama-2-7b"), precision)
    dep = Deployment(chip=a100, chips=1, strategy="tp", batch=1, context=128, precision=precision,
                     system=system_for(a100), phase="prefill", prompt_len=128)
    p = evaluate(cost, dep)
    ffn = 32 * 3 * 4096 * 11008  # gate, up and down of 32 layers
    roofline = max(2 * 128 * ffn / PEAK, 2 * ffn / BW)  # weight-bound at 128 tokens: 8.66 GB at 2.039 TB/s
    hand = roofline / km.gemm_efficiency(a100, "bf16", 128)
    assert p.breakdown_ms["dense_ffn"] == pytest.approx(hand * 1e3, rel=0.01)
