"""Tensor-parallel-split routed experts on Hopper in BF16 run at the efficiency a whole Triton fused MoE layer was
measured at (vLLM PR #44818: E=128, N=704, K=2816, top-8 on H200), each against hand arithmetic: the table's rows
become roofline efficiencies at M = pairs per expert hit, and a Qwen3-235B prefill on 8 H100s at TP8 pays its
routed experts' roofline time over that efficiency; expert-parallel experts and FP8 keep their GEMM tables."""

import pytest

from modelchip.cost import kernel_model as km
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.model_cost import model_cost
from modelchip.errors import ModelchipError
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip
from modelchip.spec.kernels import kernel_catalog, parse

BF16 = Precision(weight="bf16", kv="bf16")
# the table's top row: 4096 tokens in 1189.6 us on an H200 (989 TFLOPS BF16, 4.8 TB/s); every expert is hit
TOP_FLOPS = 2 * 4096 * 8 * 2816 * 3 * 704
TOP_BYTES = 128 * 3 * 2816 * 704 * 2
TOP_EFF = max(TOP_FLOPS / 989e12, TOP_BYTES / 4.8e12) / 1189.6e-6


def _table():
    return next(t for t in kernel_catalog().fused_moe if t.source_id == "vllm-pr-44818")


def test_rows_become_roofline_efficiencies_per_rows_per_expert():
    curve = km.fused_moe_curve(_table())
    m, e = curve[-1]
    assert m == pytest.approx(4096 * 8 / 128, rel=1e-9) and e == pytest.approx(TOP_EFF, rel=1e-9)
    assert e == pytest.approx(0.3313, abs=1e-4)
    # one token hits 8 experts: M = 1, weight-bound: 8 experts' BF16 weights over 185.1 us
    m1, e1 = curve[0]
    assert m1 == pytest.approx(1.0) and e1 == pytest.approx(8 * 3 * 2816 * 704 * 2 / 4.8e12 / 185.1e-6, rel=1e-9)


def test_lookup_needs_the_architecture_and_dtype_and_honours_exclusion():
    h100 = get_chip("h100")
    assert km.fused_moe_efficiency(h100, "bf16", 1e5, 192) == pytest.approx(TOP_EFF)  # flat beyond the last M
    assert km.fused_moe_efficiency(h100, "fp8", 256, 192) is None
    assert km.fused_moe_efficiency(get_chip("mi300x"), "bf16", 256, 192) is None
    assert km.fused_moe_efficiency(h100, "bf16", 256, 192, frozenset({"vllm-pr-44818"})) is None


def _qwen(strategy: str):
    cost = model_cost(load_model("qwen3-235b-a22b"), BF16)
    d = Deployment(chip=get_chip("h100"), chips=8, strategy=strategy, batch=1, context=1, phase="prefill",
                   prompt_len=4096, precision=BF16)
    return cost, evaluate(cost, d)


def test_tp_prefill_experts_pay_the_fused_moe_efficiency():
    cost, p = _qwen("tp")
    moe = cost.moe
    assert moe.experts == 128 and moe.top_k == 8 and moe.expert_params == 3 * 4096 * 1536 and not moe.shared_params
    pairs = 8 * 4096 * 8  # 8 sequences of 4096 tokens on the TP8 instance, 8 experts each: all 128 hit, M 2048
    flops = 2 * pairs * moe.expert_params / 8
    nbytes = 128 * moe.expert_params * 2 / 8
    per_layer = max(flops / 989e12, nbytes / 3.35e12) / TOP_EFF
    assert p.breakdown_ms["moe"] == pytest.approx(moe.layers * per_layer * 1e3, rel=1e-6)


def test_expert_parallel_experts_keep_the_grouped_gemm_efficiency():
    cost, p = _qwen("ep")
    d = Deployment(chip=get_chip("h100"), chips=8, strategy="ep", batch=1, context=1, phase="prefill",
                   prompt_len=4096, precision=BF16)
    tokens = 4096 * 8  # every chip's own sequence, routed over the 8 chips
    pairs, hit = tokens * 8 / 8, 128 / 8
    moe = cost.moe
    e = km.gemm_efficiency(d.chip, "bf16", pairs / hit, grouped=True)
    flops, nbytes = 2 * pairs * moe.expert_params, hit * moe.expert_params * 2
    if e is None:  # no BF16 Hopper GEMM table: the scalar defaults
        eff = d.efficiency
        expected = max(flops / (989e12 * eff.gemm), nbytes / (3.35e12 * eff.weight_memory(pairs / hit)))
    else:
        expected = max(flops / 989e12, nbytes / 3.35e12) / e
    assert p.breakdown_ms["moe"] == pytest.approx(moe.layers * expected * 1e3, rel=1e-6)


def test_bad_tables_are_refused():
    base = {"id": "x", "arch": "hopper", "dtype": "bf16", "measured_on": "h200", "experts": 8, "top_k": 2,
            "hidden": 64, "shard_width": 32, "source": "https://example.org", "tag": "P", "source_id": "x"}
    with pytest.raises(ModelchipError, match="tokens, microseconds"):
        parse({"fused_moe": [{**base, "rows": [[1, -2.0]]}]})
    with pytest.raises(ModelchipError, match="top_k"):
        parse({"fused_moe": [{**base, "top_k": 9, "rows": [[1, 2.0]]}]})


# TensorRT-LLM's TRTLLM-Gen NVFP4 MoE (tech blog 24, TP8 DeepSeek-V3 shard on one B200: 9,000 TFLOPS FP4, 8 TB/s)
TRTLLM_GEN = "trtllm-blog24-moe-dense-gemm"
DS_PARAMS = 3 * 7168 * 256  # one expert's TP8 shard: gate, up, down of hidden 7168 x 256


def _trtllm_gen():
    return next(t for t in kernel_catalog().fused_moe if t.source_id == TRTLLM_GEN)


def test_trtllm_gen_rows_are_weight_bound_efficiencies():
    curve = km.fused_moe_curve(_trtllm_gen())
    # one token: 8 experts' NVFP4 weights (22.0 MB) over 26.78 us
    assert curve[0][0] == pytest.approx(1.0) and curve[0][1] == pytest.approx(
        8 * DS_PARAMS * 0.5 / 8e12 / 26.78e-6, rel=1e-9)
    assert curve[0][1] == pytest.approx(0.1028, abs=1e-4)
    # 384 tokens: 3,072 pairs over all 256 experts (hit 256 (1 - (31/32)^384) = 255.9987), M 12, still weight-bound
    hit = 256 * (1 - (31 / 32) ** 384)
    m, e = curve[-1]
    assert m == pytest.approx(384 * 8 / hit, rel=1e-9)
    assert e == pytest.approx(hit * DS_PARAMS * 0.5 / 8e12 / 186.92e-6, rel=1e-9)
    assert e == pytest.approx(0.4712, abs=1e-4)


def test_trtllm_gen_stands_for_tensorrt_llm_only_and_not_past_its_weight_bound_rows():
    b200 = get_chip("b200")
    assert km.fused_moe_efficiency(b200, "fp4", 1.0, 256, engine="tensorrt-llm") == pytest.approx(
        8 * DS_PARAMS * 0.5 / 8e12 / 26.78e-6)
    assert km.fused_moe_efficiency(b200, "fp4", 1.0, 256, engine="vllm") is None
    assert km.fused_moe_efficiency(b200, "fp4", 1.0, 256) is None
    # its last row (M 12) is weight-bound: past it the grouped GEMM tables price the experts
    assert km.fused_moe_efficiency(b200, "fp4", 12.0, 256, engine="tensorrt-llm") is not None
    assert km.fused_moe_efficiency(b200, "fp4", 13.0, 256, engine="tensorrt-llm") is None
    assert km.fused_moe_efficiency(b200, "fp4", 1.0, 256, frozenset({TRTLLM_GEN}), "tensorrt-llm") is None


def test_tensorrt_llm_tp8_decode_of_one_token_pays_trtllm_gen():
    """DeepSeek-R1 NVFP4 on 8 B200s at TP8, one token: the routed experts of a layer are 8 experts' 256-wide shards,
    M 1, at the table's first efficiency: their weights' streaming time over it, 26.78 us."""
    from modelchip.cost.deploy import _gemm
    fp4 = Precision(weight="fp4", kv="bf16")
    b200 = get_chip("b200")
    d = Deployment(chip=b200, chips=8, strategy="tp", batch=1, context=1, phase="decode", precision=fp4,
                   engine="tensorrt-llm")
    flops, nbytes = 2 * 8 * DS_PARAMS, 8 * DS_PARAMS * 0.5
    t = _gemm(d, flops, nbytes, 1.0, 9e15, 8e12, "fp4", grouped=True, weight_dtype="fp4", moe_shard=256,
              calls=(8 * DS_PARAMS * 2 / 3, 8 * DS_PARAMS / 3))
    assert t == pytest.approx(26.78e-6, rel=1e-9)
    # vLLM keeps its GEMM tables: a different time
    d_vllm = Deployment(chip=b200, chips=8, strategy="tp", batch=1, context=1, phase="decode", precision=fp4,
                        engine="vllm")
    assert _gemm(d_vllm, flops, nbytes, 1.0, 9e15, 8e12, "fp4", grouped=True, weight_dtype="fp4", moe_shard=256,
                 calls=(8 * DS_PARAMS * 2 / 3, 8 * DS_PARAMS / 3)) != pytest.approx(26.78e-6, rel=1e-3)
