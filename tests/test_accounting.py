"""Per-token accounting against equations written out here, independently of the library's formulas."""

import pytest

from modelchip.cost import accounting
from modelchip.cost.conventions import EXACT, PAPER, Precision
from modelchip.errors import ModelchipError
from modelchip.spec import load_model


def test_gqa_decode_equations_llama_8b():
    # Llama-3.1-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads of 128, FFN 14336
    acc = accounting.account(load_model("llama-3.1-8b"), 1000, precision=Precision(kv="bf16"), convention=EXACT)
    assert acc.kv_bytes == 32 * 1000 * 8 * 128 * 2 * 2
    assert acc.attention_flops == 32 * 2 * 32 * 1000 * (128 + 128)
    assert acc.linear_flops == 32 * 2 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096)
    assert acc.ffn_flops == 32 * 2 * 3 * 4096 * 14336
    assert acc.lm_head_flops == 2 * 4096 * 128256


def test_mla_exact_values_use_the_latent_without_rope():
    spec = load_model("deepseek-v3")
    paper = accounting.account(spec, 4096, convention=PAPER).attention_flops
    exact = accounting.account(spec, 4096, convention=EXACT).attention_flops
    assert paper == 61 * 4 * 128 * 576 * 4096
    assert exact == 61 * 2 * 128 * 4096 * (576 + 512)


def test_chunked_layers_stop_at_their_window():
    spec = load_model("llama4-maverick")
    a = accounting.account(spec, 100_000, precision=Precision(kv="fp8", honor_pins=False))
    b = accounting.account(spec, 200_000, precision=Precision(kv="fp8", honor_pins=False))
    # only the 12 global layers grow with context: 2048 bytes per token per layer at 8-bit
    assert b.kv_bytes - a.kv_bytes == 12 * 2048 * 100_000


def test_linear_attention_state_is_constant_in_context():
    spec = load_model("minimax-m1:attn_type_list=" + str([0] * 80).replace(" ", ""))
    a = accounting.account(spec, 1000)
    b = accounting.account(spec, 1_000_000)
    assert a.kv_bytes == b.kv_bytes == 80 * 2 * 64 * 128 * 128 * 4


def test_prefill_averages_causal_attention():
    spec = load_model("llama-3.1-8b")
    pre = accounting.account(spec, 1001, phase="prefill", convention=EXACT)
    assert pre.attention_flops == pytest.approx(32 * 2 * 32 * 501 * 256)  # mean context (P+1)/2
    assert pre.kv_bytes == 32 * 8 * 128 * 2  # each prompt token writes its K and V once (8-bit)


def test_weight_bytes_follow_the_weight_dtype():
    spec = load_model("qwen3-32b")
    fp8 = accounting.account(spec, 8, precision=Precision(weight="fp8")).weight_bytes
    bf16 = accounting.account(spec, 8, precision=Precision(weight="bf16")).weight_bytes
    assert bf16 == 2 * fp8
    # a dense model reads every weight each step except the embedding table (one row per token)
    p = accounting.params(spec)
    assert fp8 == pytest.approx(p.total - p.embedding, rel=0.001)
    assert p.total == pytest.approx(32.8e9, rel=0.01)  # Qwen3-32B's model card


@pytest.mark.parametrize("context", [0, -5, 1.5, "8K", True])
def test_bad_context(context):
    with pytest.raises(ModelchipError, match="context"):
        accounting.account(load_model("qwen3-32b"), context)


def test_bad_phase():
    with pytest.raises(ModelchipError, match="phase"):
        accounting.account(load_model("qwen3-32b"), 8, phase="train")


def test_mla_prefill_runs_expanded_and_decode_absorbed():
    # engines decompress MLA for prefill: kv_b turns each prompt token's 512-wide latent into 128 heads of
    # 128-wide no-rope keys and 128-wide values once (a projection: in the linear FLOPs, not the core), then
    # multi-head attention over 192-wide keys and 128-wide values; decode stays absorbed (latent 512 + 64),
    # where kv_b's two halves multiply the query and the output instead: the same linear FLOPs
    spec = load_model("deepseek-v3")
    pre = accounting.account(spec, 4095, phase="prefill", convention=EXACT)
    assert pre.attention_flops == pytest.approx(61 * 2 * 128 * 2048 * (192 + 128))
    q = 7168 * 1536 + 1536 * 128 * 192  # q_a, q_b
    kv_a, kv_b, o = 7168 * (512 + 64), 512 * 128 * (128 + 128), 128 * 128 * 7168
    assert pre.linear_flops == 61 * 2 * (q + kv_a + kv_b + o)
    dec = accounting.account(spec, 4096, convention=EXACT)
    assert dec.attention_flops == pytest.approx(61 * 2 * 128 * 4096 * (576 + 512))
    assert dec.linear_flops == pre.linear_flops
