"""Quantized checkpoints keep the token embedding and the LM head in BF16 (quantizers target the GEMM layers and
list lm_head in their ignore / exclude_modules), checked against hand arithmetic on a Qwen3-8B step on one 910B."""

import dataclasses

import pytest

from modelchip.cost.conventions import Precision
from modelchip.cost.deploy import Deployment, evaluate
from modelchip.cost.efficiency import defaults
from modelchip.cost.model_cost import model_cost
from modelchip.cost.systems import system_for
from modelchip.spec import load_model
from modelchip.spec.chips import get_chip

BW = 1.6e12  # the catalog's 910B bandwidth (Step-3 Table 4)
TABLE = 151936 * 4096  # Qwen3-8B: vocabulary x hidden, for the embedding and again for the untied LM head


def _step(precision: Precision, tied: bool = False):
    chip = get_chip("ascend-910b")
    spec = load_model("qwen3-8b")
    if tied:
        spec = dataclasses.replace(spec, tie_word_embeddings=True)
    d = Deployment(chip=chip, chips=1, strategy="tp", batch=1, context=512, precision=precision,
                   system=system_for(chip), efficiency=defaults().override({"gemm": 0.5, "memory": 0.5}))
    return evaluate(model_cost(spec, precision), d)


def test_quantized_formats_keep_embedding_and_head_in_bf16_unless_the_checkpoint_says():
    for fmt in ("fp8", "int8", "fp4", "q4_k"):
        assert (Precision(weight=fmt).embedding_dtype(), Precision(weight=fmt).head_dtype()) == ("bf16", "bf16")
    # unquantized deployments keep their own float format
    assert (Precision(weight="fp32").embedding_dtype(), Precision(weight="fp32").head_dtype()) == ("fp32", "fp32")
    assert Precision(weight="fp4", attention_weight="fp16").head_dtype() == "fp16"
    # a GGUF file's output matrix and token_embd say their own formats
    gguf = Precision(weight="q4_k", lm_head_weight="q6_k", embedding_weight="q4_k")
    assert (gguf.head_dtype(), gguf.embedding_dtype()) == ("q6_k", "q4_k")


def test_bf16_embedding_and_head_beside_fp8_layers_cost_their_extra_bytes():
    all8 = _step(Precision(weight="fp8", lm_head_weight="fp8", embedding_weight="fp8"))
    real = _step(Precision(weight="fp8"))
    # 151,936 x 4,096 = 622.3 M weights each for embedding and LM head, one extra byte each: 1.245 GB
    assert real.memory_gb["weights"] - all8.memory_gb["weights"] == pytest.approx(2 * TABLE * 1 / 1e9, rel=1e-6)
    # batch-1 decode streams the LM head once a step at its stored width: 1.245 GB / (1.6 TB/s x 0.5) = 0.778 ms
    assert real.breakdown_ms["lm_head"] == pytest.approx(TABLE * 2 / (BW * 0.5) * 1e3, rel=1e-6)
    assert all8.breakdown_ms["lm_head"] == pytest.approx(TABLE * 1 / (BW * 0.5) * 1e3, rel=1e-6)


def test_a_tied_head_streams_and_stores_the_one_embedding_table():
    tied8 = _step(Precision(weight="fp8", embedding_weight="fp8"), tied=True)
    tied = _step(Precision(weight="fp8"), tied=True)
    untied = _step(Precision(weight="fp8"))
    # one BF16 table held instead of two; the head reads that table, at 2 bytes, or 1 where the file stores it so
    assert untied.memory_gb["weights"] - tied.memory_gb["weights"] == pytest.approx(TABLE * 2 / 1e9, rel=1e-6)
    assert tied.breakdown_ms["lm_head"] == pytest.approx(TABLE * 2 / (BW * 0.5) * 1e3, rel=1e-6)
    assert tied8.breakdown_ms["lm_head"] == pytest.approx(TABLE * 1 / (BW * 0.5) * 1e3, rel=1e-6)
