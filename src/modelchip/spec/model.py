"""The typed model spec: one description of a model that the cost model and the runtime both read.

A model is a list of decoder layers; each layer has one attention block and one FFN block. Hybrid models
(chunked + global attention, linear + full attention, interleaved dense/MoE) are just layers of different
kinds, so no formula needs to know which family a model came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AttentionKind = Literal["gqa", "mla", "mfa", "mfa-kr", "linear"]
ATTENTION_KINDS: tuple[str, ...] = ("gqa", "mla", "mfa", "mfa-kr", "linear")


@dataclass(frozen=True)
class AttentionSpec:
    """One attention block.

    kind:
      gqa     softmax attention with `num_kv_heads` K/V heads (MHA when equal to num_heads, MQA when 1).
      mla     multi-head latent attention (DeepSeek): caches one latent of kv_lora_rank + qk_rope_head_dim.
      mfa     multi-matrix factorization attention (Step-3): low-rank query (q_lora_rank), few shared K/V heads.
      mfa-kr  MFA with key reuse: the cached key also serves as the value, halving the cache.
      linear  linear (lightning) attention: a constant num_heads x head_dim x v_head_dim state per sequence.
    """

    kind: AttentionKind
    num_heads: int
    num_kv_heads: int
    head_dim: int  # query/key width per head (for MLA: qk_nope_head_dim + qk_rope_head_dim)
    v_head_dim: int
    q_lora_rank: int = 0  # MLA q_lora_rank, MFA share_q_dim; 0 = full-rank query projection
    kv_lora_rank: int = 0  # MLA only
    qk_rope_head_dim: int = 0  # MLA only: the decoupled RoPE part of the key
    window: int = 0  # chunked / sliding attention span in tokens; 0 = global
    qk_norm: bool = False
    qkv_bias: bool = False  # biases on the input projections (q/k/v; MLA: q_a_proj and kv_a_proj_with_mqa)
    o_bias: bool = False  # bias on the output projection (attention_bias in Llama, Qwen3 and DeepSeek-V3)
    output_gate: bool = False  # linear attention with a sigmoid gate on its output (MiniMax)
    kv_dtype: str | None = None  # pinned cache dtype when a model's deployment fixes it (None: the user's choice)

    @property
    def qk_nope_head_dim(self) -> int:
        return self.head_dim - self.qk_rope_head_dim


@dataclass(frozen=True)
class FFNSpec:
    """One feed-forward block: a gated (SwiGLU) MLP, or a mixture of such experts."""

    kind: Literal["dense", "moe"]
    intermediate_size: int  # dense width, or the width of one routed expert
    num_experts: int = 0
    top_k: int = 0
    shared_intermediate_size: int = 0  # total width of the always-on shared expert(s)
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    router_bias: bool = False  # e_score_correction_bias (DeepSeek) or similar
    bias: bool = False  # biases on gate, up and down projections (Llama's mlp_bias; dense only)


@dataclass(frozen=True)
class LayerSpec:
    attention: AttentionSpec
    ffn: FFNSpec


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only LLM as the cost model and the runtime see it."""

    name: str
    family: str  # the config's model_type, e.g. "llama", "deepseek_v3", "step3_text"
    hidden_size: int
    vocab_size: int
    layers: tuple[LayerSpec, ...]
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, compare=False)  # no effect on cost; keeps specs hashable
    max_position_embeddings: int = 0
    source: str = ""
    config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention_kinds(self) -> dict[str, int]:
        """How many layers use each attention kind (with windowed layers told apart)."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            a = layer.attention
            key = a.kind + (f"/window {a.window}" if a.window else "")
            counts[key] = counts.get(key, 0) + 1
        return counts

    def ffn_kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.ffn.kind] = counts.get(layer.ffn.kind, 0) + 1
        return counts
