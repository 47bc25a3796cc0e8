"""Tiny random models of every runtime family, in the field names their real config.json files use (the same
configs the runtime tests use), with seeded weights whose logits have clear greedy winners."""

from __future__ import annotations

import torch

from modelchip.runtime.models.decoder import DecoderLM
from modelchip.spec import families
from modelchip.spec.model import ModelSpec

BASE = {"vocab_size": 96, "hidden_size": 48, "num_hidden_layers": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": False}

CONFIGS: dict[str, dict] = {
    "llama": {**BASE, "model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64},
    "qwen2": {**BASE, "model_type": "qwen2", "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64},
    "qwen3": {**BASE, "model_type": "qwen3", "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "intermediate_size": 64},
    "qwen3_moe": {**BASE, "model_type": "qwen3_moe", "num_attention_heads": 4, "num_key_value_heads": 2,
                  "head_dim": 16, "intermediate_size": 64, "moe_intermediate_size": 24, "num_experts": 6,
                  "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [0]},
    "mixtral": {**BASE, "model_type": "mixtral", "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2},
    "deepseek_v3": {**BASE, "model_type": "deepseek_v3", "num_attention_heads": 4, "num_key_value_heads": 4,
                    "intermediate_size": 64, "moe_intermediate_size": 16, "n_routed_experts": 8,
                    "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 4, "topk_group": 2,
                    "routed_scaling_factor": 2.5, "first_k_dense_replace": 1, "q_lora_rank": 24,
                    "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12},
    "step3_text": {**BASE, "model_type": "step3_text", "num_attention_heads": 4, "num_attention_groups": 1,
                   "head_dim": 16, "share_q_dim": 24, "intermediate_size": 64, "moe_intermediate_size": 16,
                   "moe_num_experts": 6, "moe_top_k": 3, "share_expert_dim": 16, "moe_layers_enum": "1",
                   "norm_expert_weight": False},
}

WEIGHT_STD, EMBED_STD, NORM_STD, BIAS_STD = 0.1, 0.3, 0.1, 0.1
# Expert choice is discrete: a router near-tie that rounding resolves the other way changes the logits by O(1)
# with no op wrong. So routers get wide logits, and MoE families a seed whose routers keep clear margins over
# the whole drive script in every dtype (softmax: >= 0.1 in logits; DeepSeek's sigmoid: >= 0.05 in scores, at
# both the expert and the group cut), which tests/conformance/test_tiny_models.py checks.
ROUTER_STD = 1.0
ROUTER_STDS = {"deepseek_v3": 0.5}  # sigmoid scores saturate with wider logits, and ties come back
SEEDS = {"qwen3_moe": 3, "mixtral": 1, "deepseek_v3": 1, "step3_text": 1}


def spec(family: str) -> ModelSpec:
    return families.read(CONFIGS[family], f"tiny-{family}")


def random_state(family: str, seed: int | None = None, router_std: float | None = None) -> dict[str, torch.Tensor]:
    """Float32 weights for the tiny model of `family`, keyed like DecoderLM's state dict."""
    seed = SEEDS.get(family, 0) if seed is None else seed
    router_std = ROUTER_STDS.get(family, ROUTER_STD) if router_std is None else router_std
    from modelchip.runtime.backends import get_backend

    model = DecoderLM(get_backend("reference"), spec(family), torch.float32)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.ndim == 1 and "norm" in name:
            state[name] = 1.0 + NORM_STD * noise
        elif p.ndim == 1:
            state[name] = BIAS_STD * noise  # q/k/v biases, DeepSeek's routing correction bias
        elif name.endswith(".gate"):
            state[name] = router_std * noise
        elif "embed_tokens" in name or "lm_head" in name:
            state[name] = EMBED_STD * noise
        else:
            state[name] = WEIGHT_STD * noise
    return state


def build(ops, family: str, state: dict[str, torch.Tensor], dtype: torch.dtype) -> DecoderLM:
    """The tiny model on `ops` (its device) in `dtype`, with `state` cast to that dtype."""
    with torch.inference_mode():
        model = DecoderLM(ops, spec(family), dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
        model.prepare_weights()
    return model
