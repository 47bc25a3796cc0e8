"""Tiny random HF checkpoints, built with transformers and saved with save_pretrained, for parity tests.

Each family is built once per session (lazily, so tests that do not use transformers never import it), with
seeded random weights large enough that logits, routing and every config feature matter. The saved directory
is exactly what transformers 5 writes: config.json (with `rope_parameters`), model.safetensors (experts one
tensor per expert), generation_config.json. No tokenizer files: prompts are token ids.

`hf_checkpoint(name)` returns an `HFCheckpoint(path, model)`; `model` is the transformers model (eval mode,
float32) whose weights are in `path`. Tests that take an `hf_family` argument run once per parity family.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VOCAB = 512

# Every name here is a separately saved checkpoint. "llama_sharded" holds the same weights as "llama".
_COMMON = {"vocab_size": VOCAB, "max_position_embeddings": 256, "bos_token_id": None, "eos_token_id": None,
           "pad_token_id": None}

FAMILIES: dict[str, dict[str, Any]] = {
    # plain GQA (4 query heads, 2 KV heads), non-default rope_theta, untied lm_head
    "llama": {"cls": "LlamaForCausalLM", "config": "LlamaConfig", "seed": 1, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False}},
    # tied embeddings (no lm_head.weight in the checkpoint), MQA (1 KV head), 3 layers, SmolLM2's theta.
    # Small embeddings: with tied weights a large residual makes every token predict itself forever.
    "llama_tied": {"cls": "LlamaForCausalLM", "config": "LlamaConfig", "seed": 12, "embed_std": 0.05, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
        "intermediate_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True}},
    # q/k/v biases (Qwen2 always has them; o_proj has none)
    "qwen2": {"cls": "Qwen2ForCausalLM", "config": "Qwen2Config", "seed": 3, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False}},
    # QK-norm (per-head RMSNorm on q and k before RoPE) and head_dim (32) decoupled from hidden/heads (16)
    "qwen3": {"cls": "Qwen3ForCausalLM", "config": "Qwen3Config", "seed": 4, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 32, "intermediate_size": 96, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False}},
    # softmax top-2 of 8 experts renormalised (norm_topk_prob), QK-norm; dense/MoE mix from BOTH rules:
    # decoder_sparse_step=2 makes layers 1 and 3 sparse, mlp_only_layers=[3] makes 3 dense again,
    # so layer 1 is the only MoE layer and layers 0, 2, 3 use the dense MLP (intermediate_size 96).
    "qwen3_moe": {"cls": "Qwen3MoeForCausalLM", "config": "Qwen3MoeConfig", "seed": 5, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 96, "moe_intermediate_size": 32, "num_experts": 8,
        "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3], "norm_topk_prob": True,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False}},
    # every layer sparse, softmax top-2 of 4 experts (always renormalised), w1/w2/w3 expert names
    "mixtral": {"cls": "MixtralForCausalLM", "config": "MixtralConfig", "seed": 6, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False}},
    # MLA with q_lora_rank (q_a_proj/q_a_layernorm/q_b_proj), kv_lora_rank 32, nope 16 + rope 16, v_head_dim 24
    # (differs from qk 32), interleaved RoPE (rope_interleave true), YaRN (factor 4 from 64, ramp blends one
    # frequency) with mscale_all_dim folded into the softmax scale; layer 0 dense (first_k_dense_replace=1),
    # layers 1-2 MoE: sigmoid routing + random e_score_correction_bias, 4 groups of 2 experts, top-2 groups,
    # top-2 of 8 experts, normalised then * routed_scaling_factor 2.5, plus one shared expert.
    "deepseek_v3": {"cls": "DeepseekV3ForCausalLM", "config": "DeepseekV3Config", "seed": 7, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
        "intermediate_size": 128, "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
        "n_group": 4, "topk_group": 2, "n_shared_experts": 1, "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1, "norm_topk_prob": True, "q_lora_rank": 32, "kv_lora_rank": 32,
        "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 24, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "rope_interleave": True, "tie_word_embeddings": False,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}},
    # ---- config switches, each turned on (transformers applies them; so must the runtime)
    # attention_bias (q/k/v AND o_proj biases) and mlp_bias (gate/up/down biases)
    "llama_bias": {"cls": "LlamaForCausalLM", "config": "LlamaConfig", "seed": 21, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "attention_bias": True, "mlp_bias": True}},
    # sliding window of 8 on every layer (prompts of 16-64 tokens: most keys fall outside it)
    "mistral_sliding": {"cls": "MistralForCausalLM", "config": "MistralConfig", "seed": 22, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 8,
        "tie_word_embeddings": False}},
    "mixtral_sliding": {"cls": "MixtralForCausalLM", "config": "MixtralConfig", "seed": 23, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "sliding_window": 8, "tie_word_embeddings": False}},
    # use_sliding_window from max_window_layers=1: layer 0 global, layer 1 slides over 8 tokens
    "qwen2_sliding": {"cls": "Qwen2ForCausalLM", "config": "Qwen2Config", "seed": 24, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "use_sliding_window": True,
        "sliding_window": 8, "max_window_layers": 1, "tie_word_embeddings": False}},
    # attention_bias with QK-norm, and sliding layers from layer_types (layer 1 of 2)
    "qwen3_bias_sliding": {"cls": "Qwen3ForCausalLM", "config": "Qwen3Config", "seed": 25, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 96, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "attention_bias": True, "use_sliding_window": True, "sliding_window": 8,
        "layer_types": ["full_attention", "sliding_attention"], "tie_word_embeddings": False}},
    # attention_bias and use_sliding_window (every layer) in the MoE variant
    "qwen3_moe_bias_sliding": {"cls": "Qwen3MoeForCausalLM", "config": "Qwen3MoeConfig", "seed": 26, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 96, "moe_intermediate_size": 32, "num_experts": 4,
        "num_experts_per_tok": 2, "norm_topk_prob": True, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "attention_bias": True, "use_sliding_window": True, "sliding_window": 8, "tie_word_embeddings": False}},
    # attention_bias on MLA: biases on q_a_proj, kv_a_proj_with_mqa and o_proj
    "deepseek_v3_bias": {"cls": "DeepseekV3ForCausalLM", "config": "DeepseekV3Config", "seed": 27, "kwargs": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "intermediate_size": 128, "moe_intermediate_size": 32, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "n_group": 1, "topk_group": 1, "n_shared_experts": 1, "routed_scaling_factor": 1.0,
        "first_k_dense_replace": 1, "norm_topk_prob": True, "q_lora_rank": 32, "kv_lora_rank": 32,
        "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "rope_interleave": True, "attention_bias": True, "tie_word_embeddings": False}},
}
SHARDED = {"llama_sharded": "llama"}  # sharded copy -> the family whose model (same weights) it saves
SHARD_SIZE = "200KB"

PARITY_FAMILIES = list(FAMILIES)
WEIGHT_STD = 0.1  # every matrix (projections, experts, routers); embeddings and lm_head use EMBED_STD
EMBED_STD = 0.3  # logits std ~2, so greedy decoding has clear winners
NORM_STD = 0.1  # RMSNorm weights ~ 1 + N(0, NORM_STD)
BIAS_STD = 0.1  # attention biases and DeepSeek's e_score_correction_bias


@dataclass(frozen=True)
class HFCheckpoint:
    path: Path
    model: Any  # transformers PreTrainedModel, eval mode, float32
    name: str


def randomize(model, seed: int, embed_std: float = EMBED_STD) -> None:
    """Re-initialise every parameter and routing-bias buffer from one seeded generator."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seen = set()
        for name, p in model.named_parameters(remove_duplicate=True):
            if id(p) in seen:
                continue
            seen.add(id(p))
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + NORM_STD * noise)
            elif p.ndim == 1:
                p.copy_(BIAS_STD * noise)
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(embed_std * noise)
            else:
                p.copy_(WEIGHT_STD * noise)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(BIAS_STD * torch.randn(b.shape, generator=g, dtype=torch.float32))


def build_model(name: str):
    """The transformers model of family `name`, seeded, randomised, float32, eval mode, EOS disabled."""
    import torch
    import transformers

    spec = FAMILIES[name]
    kwargs = copy.deepcopy({**_COMMON, **spec["kwargs"]})
    config = getattr(transformers, spec["config"])(**kwargs)
    torch.manual_seed(spec["seed"])
    model = getattr(transformers, spec["cls"])(config).to(torch.float32).eval()
    randomize(model, spec["seed"], spec.get("embed_std", EMBED_STD))
    # no EOS anywhere: generation always runs to max_tokens in the runtime and in transformers
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = None
    return model


def save_checkpoint(model, path: Path, **kwargs) -> Path:
    model.save_pretrained(path, **kwargs)
    assert (path / "config.json").is_file()
    return path


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """Factory: hf_checkpoint(name) -> HFCheckpoint, built and saved once per session."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    root = tmp_path_factory.mktemp("hf_checkpoints")
    cache: dict[str, HFCheckpoint] = {}

    def get(name: str) -> HFCheckpoint:
        if name in cache:
            return cache[name]
        if name in SHARDED:
            base = get(SHARDED[name])
            path = save_checkpoint(base.model, root / name, max_shard_size=SHARD_SIZE)
            assert (path / "model.safetensors.index.json").is_file(), "save_pretrained wrote no shard index"
            assert len(list(path.glob("model-*-of-*.safetensors"))) >= 2, "checkpoint is not sharded"
            assert not (path / "model.safetensors").exists()
            cache[name] = HFCheckpoint(path, base.model, name)
        else:
            model = build_model(name)
            path = save_checkpoint(model, root / name)
            assert (path / "model.safetensors").is_file()
            cache[name] = HFCheckpoint(path, model, name)
        return cache[name]

    return get


def pytest_generate_tests(metafunc):
    if "hf_family" in metafunc.fixturenames:
        metafunc.parametrize("hf_family", PARITY_FAMILIES)


@pytest.fixture(scope="session")
def kernels():
    """The cpu backend's fused kernels, built (or found in the cache) on first use in the session, not at
    collection; tests that need them skip, saying why, where they cannot be built."""
    pytest.importorskip("torch")
    from modelchip.runtime.backends import cpu_kernels

    module, why = cpu_kernels.load()
    if module is None:
        pytest.skip(f"cpu kernels not built here: {why}")
    return module


@pytest.fixture(params=["avx512", "avx2", "baseline"])
def isa(request, kernels):
    """Each copy of the kernels' loops this CPU can run, in turn (restored after the test)."""
    best = kernels.best_isa
    order = ["baseline", "avx2", "avx512"]
    if order.index(request.param) > order.index(best):
        pytest.skip(f"this CPU runs {best} at most")
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(best)


@pytest.fixture(scope="session")
def bf16_kernels(kernels):
    """The kernels, where this CPU runs their AVX512-BF16 matmul."""
    if not kernels.has_linear_bf16:
        pytest.skip("this CPU has no AVX512-BF16 for the pair-blocked matmul")
    return kernels
