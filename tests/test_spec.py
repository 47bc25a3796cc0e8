"""Model specs from config.json: families, presets, parameter counts, what-if overrides, bad input."""

import json

import pytest

from modelchip.cost import accounting
from modelchip.errors import ModelchipError
from modelchip.spec import load_model, presets
from modelchip.spec.families import supported_model_types

REQUIRED_PRESETS = (
    "deepseek-v3", "deepseek-r1", "kimi-k2", "qwen3-235b-a22b", "qwen3-32b", "step3", "llama4-maverick",
    "minimax-m1", "ernie-4.5-300b-a47b", "pangu-pro-moe", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
    "qwen2.5-72b", "smollm2-135m", "qwen3-8b", "qwen3-30b-a3b", "mixtral-8x7b", "llama4-scout", "qwen2.5-7b",
    "qwen2.5-32b",
)


def test_every_required_preset_loads_with_a_source():
    table = presets()
    for pid in REQUIRED_PRESETS:
        assert pid in table, pid
        assert table[pid].source, f"{pid} has no source"
        assert table[pid].confidence in ("P", "S", "D", "UNVERIFIED")
        spec = load_model(pid)
        assert spec.num_layers > 0 and spec.hidden_size > 0


@pytest.mark.parametrize("model,total,active", [
    ("step3", 316e9, 38e9),
    ("deepseek-v3", 671e9, 37e9),
    ("qwen3-235b-a22b", 235e9, 22e9),
])
def test_published_parameter_counts(model, total, active):
    p = accounting.params(load_model(model))
    assert p.total == pytest.approx(total, rel=0.02)
    assert p.active == pytest.approx(active, rel=0.02)


def test_qwen3_8b_parameter_counts_match_its_model_card():
    # huggingface.co/Qwen/Qwen3-8B: 8.2B parameters, 6.95B without the (untied) embedding and output matrices
    p = accounting.params(load_model("qwen3-8b"))
    assert p.total == pytest.approx(8.2e9, rel=0.01)
    assert p.total - 2 * 151936 * 4096 == pytest.approx(6.95e9, rel=0.005)


# Published counts from each model's card, independent of the config copies the presets hold. Model cards count
# the input embedding among "activated" parameters; modelchip's `active` leaves it out (a lookup, not a matmul).
@pytest.mark.parametrize("model,total,active_with_embedding,rel", [
    # huggingface.co/Qwen/Qwen3-30B-A3B: 30.5B total, 3.3B activated
    ("qwen3-30b-a3b", 30.5e9, 3.3e9, 0.02),
    # mistral.ai/news/mixtral-of-experts: 46.7B total, 12.9B used per token
    ("mixtral-8x7b", 46.7e9, 12.9e9, 0.01),
    # huggingface.co/meta-llama/Llama-4-Scout-17B-16E-Instruct: 17B activated, 109B total (with its ~0.9B vision
    # encoder, which the preset's text model leaves out)
    ("llama4-scout", 109e9, 17e9, 0.02),
])
def test_moe_presets_match_their_model_cards(model, total, active_with_embedding, rel):
    p = accounting.params(load_model(model))
    assert p.total == pytest.approx(total, rel=rel)
    assert p.active + p.embedding == pytest.approx(active_with_embedding, rel=rel)


@pytest.mark.parametrize("model,total,non_embedding", [
    ("qwen2.5-7b", 7.61e9, 6.53e9),  # huggingface.co/Qwen/Qwen2.5-7B-Instruct: 7.61B, 6.53B non-embedding
    # huggingface.co/Qwen/Qwen2.5-32B-Instruct: 32.5B, 31.0B non-embedding (its safetensors hold 32.8B)
    ("qwen2.5-32b", 32.5e9, 31.0e9),
])
def test_qwen25_presets_match_their_model_cards(model, total, non_embedding):
    p = accounting.params(load_model(model))
    assert p.total == pytest.approx(total, rel=0.01)
    assert p.total - 2 * p.embedding == pytest.approx(non_embedding, rel=0.01)  # untied input and output matrices


def test_new_preset_shapes():
    scout = load_model("llama4-scout")
    assert scout.ffn_kinds() == {"moe": 48}  # interleave_moe_layer_step 1: every layer routes (Maverick: every 2nd)
    assert sum(layer.attention.window == 8192 for layer in scout.layers) == 36  # 3 chunked layers of every 4
    mixtral = load_model("mixtral-8x7b")
    assert mixtral.ffn_kinds() == {"moe": 32} and mixtral.layers[0].ffn.top_k == 2
    qwen = load_model("qwen3-30b-a3b")
    assert qwen.ffn_kinds() == {"moe": 48} and qwen.layers[0].ffn.num_experts == 128


def test_smollm2_parameter_count_matches_its_gguf():
    # offline-models.md: 134.5M parameters with tied embeddings
    assert accounting.params(load_model("smollm2-135m")).total == pytest.approx(134.5e6, rel=0.01)


def test_family_shapes():
    step3 = load_model("step3")
    assert step3.family == "step3_text"
    assert step3.ffn_kinds() == {"dense": 5, "moe": 56}
    assert {layer.attention.kind for layer in step3.layers} == {"mfa"}
    dsv3 = load_model("deepseek-v3")
    assert dsv3.ffn_kinds() == {"dense": 3, "moe": 58}
    assert dsv3.layers[0].attention.kv_lora_rank == 512
    k2 = load_model("kimi-k2")
    assert k2.layers[0].attention.num_heads == 64 and k2.ffn_kinds()["dense"] == 1
    maverick = load_model("llama4-maverick")
    windows = [layer.attention.window for layer in maverick.layers]
    assert windows.count(0) == 12 and windows.count(8192) == 36
    assert maverick.ffn_kinds() == {"dense": 24, "moe": 24}
    minimax = load_model("minimax-m1")
    kinds = [layer.attention.kind for layer in minimax.layers]
    assert kinds.count("gqa") == 10 and kinds.count("linear") == 70
    qwen3 = load_model("qwen3-32b")
    assert qwen3.layers[0].attention.qk_norm


def test_config_file_and_directory(tmp_path):
    config = dict(presets()["llama-3.1-8b"].config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_dir = load_model(str(tmp_path))
    from_file = load_model(str(tmp_path / "config.json"))
    assert from_dir.layers == from_file.layers == load_model("llama-3.1-8b").layers


def test_transformers_5_rope_parameters_accepted(tmp_path):
    config = dict(presets()["llama-3.1-8b"].config)
    config.pop("rope_theta", None)
    config["rope_parameters"] = {"rope_theta": 123456.0, "rope_type": "default"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model(str(tmp_path)).rope_theta == 123456.0


def test_override_config_field():
    gqa8 = load_model("step3", ["num_key_value_heads=8"])  # the common name maps to num_attention_groups
    assert {layer.attention.num_kv_heads for layer in gqa8.layers} == {8}
    assert accounting.kv_cache_bytes_per_token(gqa8, "fp8") == 8 * 31232


def test_inline_override_equals_set():
    inline = load_model("qwen3-32b:num_key_value_heads=4")
    assert inline.layers == load_model("qwen3-32b", ["num_key_value_heads=4"]).layers


def test_attention_redesign():
    # MFA vs MFA-KR vs MHA with Step-3's dims (61 layers, 64 heads of 256)
    mha = accounting.kv_cache_bytes_per_token(load_model("step3", ["attention=mha"]), "bf16")
    mfa = accounting.kv_cache_bytes_per_token(load_model("step3"), "bf16")
    kr = accounting.kv_cache_bytes_per_token(load_model("step3", ["attention=mfa-kr"]), "bf16")
    assert (mha, mfa, kr) == (61 * 64 * 256 * 2 * 2, 61 * 256 * 2 * 2, 61 * 256 * 2)


def test_nested_override():
    spec = load_model("deepseek-v3", ["rope_scaling.factor=8"])
    assert spec.rope_scaling["factor"] == 8


@pytest.mark.parametrize("bad,message", [
    (["no_such_field=1"], "no_such_field"),
    (["num_key_value_head=8"], "did you mean"),
    (["attention=banana"], "gqa, mha"),
    (["novalue"], "key=value"),
])
def test_bad_overrides(bad, message):
    with pytest.raises(ModelchipError, match=message):
        load_model("qwen3-32b", bad)


def test_unknown_model_suggests_near_matches():
    with pytest.raises(ModelchipError, match="did you mean.*deepseek-v3"):
        load_model("deepseek-v4")


def test_missing_field_is_named(tmp_path):
    config = dict(presets()["qwen3-235b-a22b"].config)
    del config["moe_intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelchipError, match="missing field 'moe_intermediate_size'"):
        load_model(str(tmp_path))


def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    with pytest.raises(ModelchipError, match="unsupported model_type 'gpt2'.*deepseek_v3.*step3_text"):
        load_model(str(tmp_path))
    assert "qwen3_moe" in supported_model_types()


def test_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelchipError, match="not valid JSON"):
        load_model(str(tmp_path))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelchipError, match="no config.json"):
        load_model(str(tmp_path))
