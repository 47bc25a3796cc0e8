"""Cost of one attention block per token: cache size, bytes read, core FLOPs, projection FLOPs, parameters.

Shapes follow the forward pass of each kind (H = hidden size, h = query heads, g = K/V heads, d = head dim):
  gqa     q: H->h*d, k,v: H->g*d each, o: h*d->H; caches K and V: 2*g*d per token.
  mfa     q: H->r (norm) ->h*d, k,v: H->g*d; caches 2*g*d (Step-3: g=1, d=256 -> 512).
  mfa-kr  as mfa but the key is also the value: no v projection, caches g*d.
  mla     q: H->r_q (norm) ->h*(d_nope+d_rope), kv_a: H->r_kv+d_rope (norm), kv_b: r_kv->h*(d_nope+d_v),
          o: h*d_v->H; caches the latent r_kv+d_rope. Decode runs absorbed: scores and values over the latent.
  linear  qkv: H->3*h*d, output gate H->h*d, o: h*d->H; keeps an h*d*d_v state instead of a cache.
"""

from __future__ import annotations

from modelchip.cost.conventions import Convention, Precision
from modelchip.spec import dtypes
from modelchip.spec.model import AttentionSpec


def projection_weights(a: AttentionSpec, hidden: int) -> int:
    """Weights of the projections before and after the attention core (the paper's 'linear' part)."""
    h, g, d, dv = a.num_heads, a.num_kv_heads, a.head_dim, a.v_head_dim
    if a.kind == "gqa":
        return hidden * (h * d + g * d + g * dv) + h * dv * hidden
    if a.kind in ("mfa", "mfa-kr"):
        q = hidden * a.q_lora_rank + a.q_lora_rank * h * d if a.q_lora_rank else hidden * h * d
        kv = hidden * g * d * (1 if a.kind == "mfa-kr" else 2)
        return q + kv + h * dv * hidden
    if a.kind == "mla":
        q = hidden * a.q_lora_rank + a.q_lora_rank * h * d if a.q_lora_rank else hidden * h * d
        kv_a = hidden * (a.kv_lora_rank + a.qk_rope_head_dim)
        kv_b = a.kv_lora_rank * h * (a.qk_nope_head_dim + dv)
        return q + kv_a + kv_b + h * dv * hidden
    if a.kind == "linear":
        return hidden * (2 * h * d + h * dv) + (hidden * h * dv if a.output_gate else 0) + h * dv * hidden
    raise ValueError(f"unknown attention kind {a.kind!r}")


def projection_calls(a: AttentionSpec, hidden: int) -> tuple[int, ...]:
    """Weights of each matmul call of the projections, in the runtime's order (they sum to projection_weights):
    a call, not a layer, is what pays a kernel's per-call floor. GQA stacks q, k and v into one call (MFA its
    low-rank query's first matmul with k and v); MLA's kv_b runs as the two absorptions of decode (keys, then
    values)."""
    h, g, d, dv = a.num_heads, a.num_kv_heads, a.head_dim, a.v_head_dim
    o = h * dv * hidden
    if a.kind == "gqa":
        return hidden * (h * d + g * d + g * dv), o
    q = (hidden * a.q_lora_rank, a.q_lora_rank * h * d) if a.q_lora_rank else (hidden * h * d,)
    if a.kind in ("mfa", "mfa-kr"):  # the query's first matmul is stacked with the keys and values
        return q[0] + hidden * g * d * (1 if a.kind == "mfa-kr" else 2), *q[1:], o
    if a.kind == "mla":
        absorb = (a.kv_lora_rank * h * a.qk_nope_head_dim, a.kv_lora_rank * h * dv)
        return *q, hidden * (a.kv_lora_rank + a.qk_rope_head_dim), *absorb, o
    if a.kind == "linear":
        return hidden * (2 * h * d + h * dv) + (hidden * h * dv if a.output_gate else 0), o
    raise ValueError(f"unknown attention kind {a.kind!r}")


def params(a: AttentionSpec, hidden: int) -> int:
    """All parameters of the block: projections, biases, and the norms inside it."""
    n = projection_weights(a, hidden)
    if a.qkv_bias and a.kind == "mla":  # q_a_proj (a full-rank q_proj has none) and kv_a_proj_with_mqa
        n += a.q_lora_rank + a.kv_lora_rank + a.qk_rope_head_dim
    elif a.qkv_bias:
        n += a.num_heads * a.head_dim + a.num_kv_heads * (a.head_dim + a.v_head_dim)
    if a.o_bias:
        n += hidden
    if a.qk_norm:
        n += 2 * a.head_dim
    if a.kind in ("mfa", "mfa-kr", "mla") and a.q_lora_rank:
        n += a.q_lora_rank  # norm on the low-rank query
    if a.kind == "mla":
        n += a.kv_lora_rank
    if a.kind == "linear":
        n += a.num_heads * a.v_head_dim  # norm on the read-out
    return n


def cached_elements(a: AttentionSpec) -> int:
    """Elements cached per token (0 for linear attention, which keeps a fixed state instead)."""
    if a.kind == "gqa":
        return a.num_kv_heads * (a.head_dim + a.v_head_dim)
    if a.kind == "mfa":
        return 2 * a.num_kv_heads * a.head_dim
    if a.kind == "mfa-kr":
        return a.num_kv_heads * a.head_dim
    if a.kind == "mla":
        return a.kv_lora_rank + a.qk_rope_head_dim
    return 0


def state_elements(a: AttentionSpec) -> int:
    """Elements of a linear-attention state per sequence (0 for softmax attention)."""
    return a.num_heads * a.head_dim * a.v_head_dim if a.kind == "linear" else 0


def attended(a: AttentionSpec, context: int) -> int:
    """Tokens a decoding query attends to: chunked/sliding layers stop at their window."""
    return min(context, a.window) if a.window else context


def mean_attended_prefill(a: AttentionSpec, prompt: int) -> float:
    """Average tokens attended per prompt position in causal prefill (position i sees i tokens, capped)."""
    if not a.window or a.window >= prompt:
        return (prompt + 1) / 2
    w = a.window
    return (w * (w + 1) / 2 + (prompt - w) * w) / prompt


def kv_bytes_read(a: AttentionSpec, tokens: float, precision: Precision) -> float:
    """Cache bytes one decoding token reads (`tokens` attended); a linear state is read and written back."""
    if a.kind == "linear":
        return 2 * state_elements(a) * dtypes.nbytes(precision.linear_state)
    return tokens * cached_elements(a) * precision.kv_bytes(a.kv_dtype)


def core_flops(a: AttentionSpec, tokens: float, conv: Convention, phase: str = "decode") -> float:
    """FLOPs of the attention core (scores, softmax-weighted values) for one query over `tokens` tokens.

    MLA has two forms and engines pick per phase (vLLM's MLA backends, SGLang): decode runs absorbed (scores
    and values over the cached latent: least data moved); prefill decompresses each prompt token's latent
    through kv_b once and runs ordinary multi-head attention over d_nope + d_rope keys and d_v values (a
    third of the absorbed FLOPs per attended token for DeepSeek-V3). Either way kv_b's FLOPs are the
    projection's (`linear_flops`): absorbed, its two halves multiply the query and the output; expanded, it
    decompresses the token's latent. So the core is the attention alone in both."""
    h = a.num_heads
    if a.kind == "linear":
        return conv.linear_state_flops * state_elements(a)
    if a.kind == "mla" and phase == "prefill":
        return 2 * h * tokens * (a.head_dim + a.v_head_dim)
    if a.kind == "mla":  # absorbed: scores over the latent + rope part, values over the latent
        latent = a.kv_lora_rank + a.qk_rope_head_dim
        value_width = latent if conv.mla_values_full_latent else a.kv_lora_rank
        return 2 * h * tokens * (latent + value_width)
    return 2 * h * tokens * (a.head_dim + a.v_head_dim)


def linear_flops(a: AttentionSpec, hidden: int) -> float:
    return 2.0 * projection_weights(a, hidden)
