"""Config switches the runtime refuses by name, so a checkpoint it cannot run exactly never loads silently.

The switches it honours are read into the ModelSpec (spec/families.py): tie_word_embeddings, head_dim,
attention_bias (llama, qwen3, qwen3_moe, deepseek_v3), mlp_bias (llama), QK-norm (qwen3, qwen3_moe),
sliding windows (sliding_window in mistral and mixtral; use_sliding_window with max_window_layers or
layer_types in qwen2 and qwen3; use_sliding_window in qwen3_moe), rope scaling (linear, llama3, yarn),
rope_interleave (deepseek_v3). Everything here changes what a model computes and has no code in the runtime.
"""

from __future__ import annotations

from modelchip.errors import ModelchipError
from modelchip.runtime.loaders.quant_config import method as quant_method

# transformers' names for SiLU (ACT2FN maps both to nn.SiLU)
SILU = ("silu", "swish")

# switch -> the model types whose transformers modelling code reads it. Elsewhere a true value means a
# checkpoint made by some other code (vLLM's Llama reads attention_bias for Mistral, transformers does not),
# so the runtime cannot know which answer is meant.
HONOURED_BY = {
    "attention_bias": ("llama", "qwen3", "qwen3_moe", "deepseek_v3", "kimi_k2"),
    "mlp_bias": ("llama",),
}

# switches no runtime family supports when set (truthy): softcaps, logit/residual multipliers
NEVER = ("attn_logit_softcapping", "final_logit_softcapping", "logits_scaling", "embedding_multiplier",
         "residual_multiplier", "attention_multiplier")

ROUTER_SCORING = ("softmax", "sigmoid")
TOPK_METHODS = ("noaux_tc", "greedy", "group_limited_greedy")


def check_supported(config: dict, model_type: str) -> None:
    """Raise ModelchipError naming the first switch in `config` (a text config) the runtime cannot honour."""

    def refuse(field: str, why: str) -> None:
        raise ModelchipError(f"config.json field {field!r} {why}; the runtime of model_type {model_type!r} "
                             "cannot run it as the checkpoint means (no fallback: the output would be wrong)")

    quant = config.get("quantization_config")
    if quant and not isinstance(quant, dict):
        refuse("quantization_config", f"is {quant!r}, not a quantization config")
    quant_method(config)  # the loaders read block-scaled FP8 and compressed-tensors INT8; anything else is refused
    for field in ("hidden_act", "hidden_activation"):
        act = config.get(field)
        if act is not None and act not in SILU:
            refuse(field, f"is {act!r}; only SiLU-gated MLPs are supported ({', '.join(SILU)})")
    for field, families in HONOURED_BY.items():
        if config.get(field) and model_type not in families:
            refuse(field, f"is {config[field]!r}, a switch that {model_type!r} checkpoints do not define "
                   f"(it is honoured for {', '.join(families)})")
    for field in NEVER:
        if config.get(field) not in (None, 0, 1, 0.0, 1.0, False):
            refuse(field, f"is {config[field]!r}, which no runtime family supports")
    rope = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    for where in (config, rope):
        factor = where.get("partial_rotary_factor")
        if factor not in (None, 1, 1.0):
            refuse("partial_rotary_factor", f"is {factor!r}; RoPE over part of a head is not supported")
    if model_type in ("deepseek_v3", "kimi_k2"):
        scoring = config.get("scoring_func", "sigmoid")
        if scoring not in ROUTER_SCORING:
            refuse("scoring_func", f"is {scoring!r} (supported: {', '.join(ROUTER_SCORING)})")
        method = config.get("topk_method", "noaux_tc")
        if method not in TOPK_METHODS:
            refuse("topk_method", f"is {method!r} (supported: {', '.join(TOPK_METHODS)})")
