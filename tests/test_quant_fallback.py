"""Layers a quantizer leaves in float beside integer layers (msModelSlim's W8A8: the LM head and every down_proj
kept in BF16), checked against hand arithmetic on a Qwen3-8B step on one Ascend 910B."""

import pytest

from modelchip.cost import validation
from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.efficiency import defaults
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

BW, BF16, INT8 = 1.6e12, 2.8e14, 5.6e14  # the catalog's 910B: Step-3 Table 4 bandwidth, msmodeling 280T peaks
# a checkpoint that quantized its LM head and embedding too (no quantizer's ignore list kept them in BF16)
W8A8 = Precision(weight="int8", kv="bf16", compute="int8", lm_head_weight="int8", embedding_weight="int8")
FALLBACK = Precision(weight="int8", kv="bf16", compute="int8", lm_head_weight="bf16", ffn_down_weight="bf16")
# Qwen3-8B: 36 layers of gate, up and down at 4,096 x 12,288; vocabulary 151,936 untied
FFN = 36 * 3 * 4096 * 12288
HEAD = 151936 * 4096


def _step(precision: Precision, **kw):
    chip = get_chip("ascend-910b")
    base = dict(chip=chip, chips=1, strategy="tp", batch=1, context=512, precision=precision,
                system=system_for(chip), efficiency=defaults().override({"gemm": 0.5, "memory": 0.5}))
    return evaluate(model_cost(load_model("qwen3-8b"), precision), Deployment(**{**base, **kw}))


def test_down_proj_and_lm_head_kept_in_bf16_stream_twice_their_int8_bytes():
    # batch 1 decode is bound by the weights' bytes: gate and up at 1 byte, down and the LM head at 2
    int8, mixed = _step(W8A8), _step(FALLBACK)
    assert int8.breakdown_ms["dense_ffn"] == pytest.approx(FFN * 1 / (BW * 0.5) * 1e3, rel=1e-6)
    assert mixed.breakdown_ms["dense_ffn"] == pytest.approx(FFN * (2 / 3 * 1 + 1 / 3 * 2) / (BW * 0.5) * 1e3,
                                                            rel=1e-6)
    assert mixed.breakdown_ms["lm_head"] == pytest.approx(HEAD * 2 / (BW * 0.5) * 1e3, rel=1e-6)
    assert mixed.breakdown_ms["attention_proj"] == pytest.approx(int8.breakdown_ms["attention_proj"])
    # the 36 down_proj (1.81 GB at BF16), the LM head and the embedding (a BF16 table by default) held at 2 bytes
    extra_gb = (FFN / 3 + HEAD + HEAD) * (2 - 1) / 1e9
    assert mixed.memory_gb["weights"] - int8.memory_gb["weights"] == pytest.approx(extra_gb, rel=1e-6)


def test_a_float_down_proj_beside_int8_compute_runs_at_the_bf16_peak():
    # a prefill of 8 x 2,048 tokens is compute bound: gate and up on the INT8 units, down (float activations) on
    # the BF16 ones, each at the 0.5 GEMM efficiency set here
    tokens = 8 * 2048
    p = _step(FALLBACK, phase="prefill", batch=8, prompt_len=2048)
    up = 2 * tokens * FFN * 2 / 3 / (INT8 * 0.5)
    down = 2 * tokens * FFN / 3 / (BF16 * 0.5)
    assert p.breakdown_ms["dense_ffn"] == pytest.approx((up + down) * 1e3, rel=1e-6)
    assert Precision(weight="int8", compute="int8").compute_dtype(get_chip("ascend-910b"), "bf16") == "bf16"
    assert Precision(weight="int8", compute="int8").compute_dtype(get_chip("ascend-910b")) == "int8"


def test_validation_points_carry_the_checkpoints_float_layers():
    p = next(x for x in validation.points()["point"] if x["id"] == "gpustack-910b-qwen3-8b-mindie-w8a8-sharegpt-c4")
    _, d = validation.deployment(p)
    assert (d.precision.lm_head_weight, d.precision.ffn_down_weight) == ("bf16", "bf16")
    # the MindIE ShareGPT run sent 1,000 prompts: 217,393 input and 201,773 output tokens
    assert (p["prompt_len"], p["output_len"]) == (round(217393 / 1000), round(201773 / 1000))
