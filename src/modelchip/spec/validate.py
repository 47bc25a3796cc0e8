"""Checks that a ModelSpec describes a model that can exist, run after reading a config and after every what-if.

A what-if such as `--set num_key_value_heads=0` would otherwise give zero KV bytes and an infinite ratio, and a
negative or non-dividing head count a negative or fractional cache. Errors name the config.json field (the
family's own spelling in parentheses where it differs).
"""

from __future__ import annotations

import math

from modelchip.errors import ModelchipError
from modelchip.spec.model import AttentionSpec, FFNSpec, ModelSpec

# spec attribute -> the config.json field it is read from (HF's common spelling)
_FIELDS = {
    "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
    "v_head_dim": "v_head_dim", "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank",
    "qk_rope_head_dim": "qk_rope_head_dim", "window": "sliding_window",
    "num_experts": "num_experts", "top_k": "num_experts_per_tok",
    "shared_intermediate_size": "shared_expert_intermediate_size", "n_group": "n_group",
    "topk_group": "topk_group",
}


def validate(spec: ModelSpec, aliases: dict[str, str] | None = None) -> ModelSpec:
    """Return `spec` unchanged, or raise ModelchipError naming the first field that makes it impossible.
    `aliases` maps HF field names to the family's own (families.FIELD_ALIASES)."""
    aliases = aliases or {}

    def name(attr: str, ffn: FFNSpec | None = None) -> str:
        field = _FIELDS.get(attr, attr)
        if attr == "intermediate_size" and ffn is not None and ffn.kind == "moe":
            field = "moe_intermediate_size"
        own = aliases.get(field)
        return f"{field} ({own})" if own else field

    def positive(value, field: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ModelchipError(f"{field} is {value!r}; it must be a positive integer")

    def non_negative(value, field: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ModelchipError(f"{field} is {value!r}; it must be an integer >= 0")

    def finite(value, field: str, low: float = 0.0, strict: bool = True) -> None:
        ok = isinstance(value, int | float) and math.isfinite(value) and (value > low if strict else value >= low)
        if not ok:
            raise ModelchipError(f"{field} is {value!r}; it must be a finite number {'>' if strict else '>='} {low}")

    positive(spec.hidden_size, "hidden_size")
    positive(spec.vocab_size, "vocab_size")
    positive(spec.num_layers, "num_hidden_layers")
    non_negative(spec.max_position_embeddings, "max_position_embeddings")
    finite(spec.rms_norm_eps, "rms_norm_eps", strict=False)
    finite(spec.rope_theta, "rope_theta")
    checked: set[int] = set()
    for layer in spec.layers:
        for part, check in ((layer.attention, _attention), (layer.ffn, _ffn)):
            if id(part) not in checked:  # layers share their specs: check each once
                checked.add(id(part))
                check(part, name, positive, non_negative, finite)
    return spec


def _attention(a: AttentionSpec, name, positive, non_negative, finite) -> None:
    for attr in ("num_heads", "num_kv_heads", "head_dim", "v_head_dim"):
        positive(getattr(a, attr), name(attr))
    for attr in ("q_lora_rank", "window"):
        non_negative(getattr(a, attr), name(attr))
    if a.kind in ("gqa", "mfa", "mfa-kr") and a.num_heads % a.num_kv_heads:
        raise ModelchipError(f"{name('num_heads')} ({a.num_heads}) is not a multiple of {name('num_kv_heads')} "
                             f"({a.num_kv_heads}): query heads must split evenly over the K/V heads")
    if a.kind == "mla":
        positive(a.kv_lora_rank, name("kv_lora_rank"))
        positive(a.qk_rope_head_dim, name("qk_rope_head_dim"))
        if a.qk_rope_head_dim >= a.head_dim:
            raise ModelchipError(f"{name('qk_rope_head_dim')} ({a.qk_rope_head_dim}) leaves no qk_nope_head_dim "
                                 f"in a query/key head of {a.head_dim}")


def _ffn(f: FFNSpec, name, positive, non_negative, finite) -> None:
    positive(f.intermediate_size, name("intermediate_size", f))
    if f.kind != "moe":
        return
    for attr in ("num_experts", "top_k", "n_group", "topk_group"):
        positive(getattr(f, attr), name(attr))
    non_negative(f.shared_intermediate_size, name("shared_intermediate_size"))
    finite(f.routed_scaling_factor, "routed_scaling_factor")
    if f.top_k > f.num_experts:
        raise ModelchipError(f"{name('top_k')} ({f.top_k}) is more than {name('num_experts')} ({f.num_experts})")
    if f.num_experts % f.n_group or f.topk_group > f.n_group:
        raise ModelchipError(f"{name('n_group')} ({f.n_group}) must divide {name('num_experts')} ({f.num_experts}) "
                             f"and be at least {name('topk_group')} ({f.topk_group})")
