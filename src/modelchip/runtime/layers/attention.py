"""Attention blocks over a paged KV cache: GQA (MHA/MQA), MFA (Step-3) and MLA (DeepSeek, absorbed).

Each block writes its new tokens' cache entries, then attends over the sequence's cached tokens, so prefill,
chunked prefill and decode are one code path. Cost per token: modelchip.cost.attention (cached_elements,
core_flops with the exact convention, projection_weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.contract import AttentionMetadata
from modelchip.runtime.distributed.tensor_parallel import Shard, split_heads, tp_of
from modelchip.runtime.layers.base import Layer, Slot, stacked_slots
from modelchip.runtime.layers.norm import RMSNorm
from modelchip.runtime.layers.rotary import RotaryEmbedding
from modelchip.spec.model import AttentionSpec


@dataclass(frozen=True)
class CacheLayout:
    """Per-token cache entry of one layer: K [heads, k_dim], and V [heads, v_dim] or values read from K."""

    heads: int
    k_dim: int
    v_dim: int
    separate_v: bool


class GQAAttention(Layer):
    LINEAR_WEIGHTS = ("qkv_proj", "o_proj")

    def __init__(self, ops, hidden: int, a: AttentionSpec, eps: float, rope: RotaryEmbedding, dtype):
        super().__init__(ops, dtype)
        self.a, self.rope = a, rope
        # tensor parallel (distributed/tensor_parallel.py): this rank's query heads and the K/V heads they read
        self.tp_rank, self.tp_size = tp_of(ops)
        self.heads = split_heads(a.num_heads, a.num_kv_heads, self.tp_rank, self.tp_size)
        h, g, d = self.heads.heads, self.heads.kv_heads, a.head_dim
        self.split = (h * d, g * d, g * d)
        self.qkv_proj = self.p(sum(self.split), hidden)  # q, k and v stacked: one matmul reads x once
        self.o_proj = self.p(hidden, h * d)
        self.qkv_bias = self.p(sum(self.split)) if a.qkv_bias else None
        self.o_bias = self.p(hidden) if a.o_bias else None
        self.q_norm = RMSNorm(ops, d, eps, dtype) if a.qk_norm else None
        self.k_norm = RMSNorm(ops, d, eps, dtype) if a.qk_norm else None
        self.scale = d ** -0.5
        self.layout = CacheLayout(g, d, d, True)

    def forward(self, x, positions, meta: AttentionMetadata, cache: tuple[torch.Tensor, torch.Tensor]):
        a, ops, t, heads = self.a, self.ops, x.shape[0], self.heads
        q, k, v = ops.linear(x, self.qkv_proj, self.qkv_bias).split(self.split, dim=-1)
        q, k, v = q.view(t, heads.heads, -1), k.view(t, heads.kv_heads, -1), v.view(t, heads.kv_heads, -1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rope(positions)
        q, k = ops.rotary_embedding(q, cos, sin), ops.rotary_embedding(k, cos, sin)
        ops.write_kv(cache[0], k, meta.slot_mapping)
        ops.write_kv(cache[1], v, meta.slot_mapping)
        o = ops.paged_attention(q, cache[0], cache[1], meta, self.scale, window=a.window)
        if self.tp_size == 1:
            return ops.linear(o.reshape(t, -1), self.o_proj, self.o_bias)
        # row-parallel o_proj: partial sums over this rank's heads, the bias added once (rank 0), then summed
        bias = self.o_bias if self.tp_rank == 0 else None
        return ops.comm.all_reduce(ops.linear(o.reshape(t, -1), self.o_proj, bias))

    def slots(self, prefix: str) -> dict[str, Slot]:
        qkv, q_src, kv_src, o_src = ("q_proj", "k_proj", "v_proj"), None, None, None
        if self.tp_size > 1:  # this rank's rows of q, k, v and its columns of o_proj
            a, hs, d = self.a, self.heads, self.a.head_dim
            q_src = Shard(0, hs.q_start * d, (hs.q_start + hs.heads) * d, a.num_heads * d)
            kv_src = Shard(0, hs.kv_start * d, (hs.kv_start + hs.kv_heads) * d, a.num_kv_heads * d)
            o_src = Shard(1, q_src.start, q_src.stop, q_src.full)
        sources = (q_src, kv_src, kv_src) if self.tp_size > 1 else None
        out = stacked_slots(prefix, qkv, "weight", self.qkv_proj, self.split, sources)
        out[f"{prefix}.o_proj.weight"] = Slot(self.o_proj, source=o_src)
        if self.a.qkv_bias:
            out |= stacked_slots(prefix, qkv, "bias", self.qkv_bias, self.split, sources)
        if self.a.o_bias:
            out[f"{prefix}.o_proj.bias"] = Slot(self.o_bias)
        if self.q_norm is not None:
            out.update(self.q_norm.slots(f"{prefix}.q_norm") | self.k_norm.slots(f"{prefix}.k_norm"))
        return out


class MFAAttention(Layer):
    """Step-3: q = wq(norm(q_proj x)) with a low-rank bottleneck; few shared K/V heads; full-dim RoPE."""

    LINEAR_WEIGHTS = ("qkv_proj", "wq", "o_proj")

    def __init__(self, ops, hidden: int, a: AttentionSpec, eps: float, rope: RotaryEmbedding, dtype):
        super().__init__(ops, dtype)
        if a.kind != "mfa":
            raise ModelchipError(f"the runtime has no {a.kind!r} attention (MFA-KR is a cost-model what-if)")
        self.a, self.rope = a, rope
        h, g, d, r = a.num_heads, a.num_kv_heads, a.head_dim, a.q_lora_rank
        self.split = (r, g * d, g * d)
        self.qkv_proj = self.p(sum(self.split), hidden)  # low-rank q, k and v stacked: one matmul
        self.inter_norm = RMSNorm(ops, r, eps, dtype)
        self.wq = self.p(h * d, r)
        self.o_proj = self.p(hidden, h * d)
        self.scale = d ** -0.5
        self.layout = CacheLayout(g, d, d, True)

    def forward(self, x, positions, meta: AttentionMetadata, cache):
        a, ops, t = self.a, self.ops, x.shape[0]
        q_low, k, v = ops.linear(x, self.qkv_proj).split(self.split, dim=-1)
        q = ops.linear(self.inter_norm(q_low), self.wq).view(t, a.num_heads, a.head_dim)
        k, v = k.view(t, a.num_kv_heads, a.head_dim), v.view(t, a.num_kv_heads, a.head_dim)
        cos, sin = self.rope(positions)
        q, k = ops.rotary_embedding(q, cos, sin), ops.rotary_embedding(k, cos, sin)
        ops.write_kv(cache[0], k, meta.slot_mapping)
        ops.write_kv(cache[1], v, meta.slot_mapping)
        o = ops.paged_attention(q, cache[0], cache[1], meta, self.scale)
        return ops.linear(o.reshape(t, -1), self.o_proj)

    def slots(self, prefix: str) -> dict[str, Slot]:
        out = stacked_slots(prefix, ("q_proj", "k_proj", "v_proj"), "weight", self.qkv_proj, self.split)
        out |= {f"{prefix}.{n}.weight": Slot(getattr(self, n)) for n in ("wq", "o_proj")}
        return out | self.inter_norm.slots(f"{prefix}.inter_norm")


class MLAAttention(Layer):
    """DeepSeek MLA in absorbed form: the cache holds the normalised latent and the roped key part (576 for
    V3); queries are moved into latent space by W_UK and outputs out of it by W_UV, both slices of kv_b_proj."""

    LINEAR_WEIGHTS = ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "o_proj")  # kv_b_proj: sliced

    def __init__(self, ops, hidden: int, a: AttentionSpec, eps: float, rope: RotaryEmbedding, dtype,
                 interleaved_rope: bool = True, scale: float | None = None):
        super().__init__(ops, dtype)
        self.a, self.rope, self.interleaved = a, rope, interleaved_rope
        h, r_kv, rope_d, nope, v = a.num_heads, a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim
        # attention_bias: biases on q_a_proj, kv_a_proj_with_mqa and o_proj (as transformers' DeepseekV3)
        self.q_a_bias = self.p(a.q_lora_rank) if a.q_lora_rank and a.qkv_bias else None
        self.kv_a_bias = self.p(r_kv + rope_d) if a.qkv_bias else None
        self.o_bias = self.p(hidden) if a.o_bias else None
        if a.q_lora_rank:
            self.q_a_proj = self.p(a.q_lora_rank, hidden)
            self.q_a_layernorm = RMSNorm(ops, a.q_lora_rank, eps, dtype)
            self.q_b_proj = self.p(h * a.head_dim, a.q_lora_rank)
        else:
            self.q_proj = self.p(h * a.head_dim, hidden)
        self.kv_a_proj_with_mqa = self.p(r_kv + rope_d, hidden)
        self.kv_a_layernorm = RMSNorm(ops, r_kv, eps, dtype)
        self.kv_b_proj = self.p(h * (nope + v), r_kv)
        self.o_proj = self.p(hidden, h * v)
        self.scale = scale if scale is not None else a.head_dim ** -0.5
        self.layout = CacheLayout(1, r_kv + rope_d, r_kv, False)

    def forward(self, x, positions, meta: AttentionMetadata, cache):
        a, ops, t = self.a, self.ops, x.shape[0]
        h, r_kv, nope = a.num_heads, a.kv_lora_rank, a.qk_nope_head_dim
        if a.q_lora_rank:
            q = ops.linear(self.q_a_layernorm(ops.linear(x, self.q_a_proj, self.q_a_bias)), self.q_b_proj)
        else:
            q = ops.linear(x, self.q_proj)
        q = q.view(t, h, a.head_dim)
        q_nope, q_pe = q[..., :nope], q[..., nope:]
        kv = ops.linear(x, self.kv_a_proj_with_mqa, self.kv_a_bias)
        latent, k_pe = self.kv_a_layernorm(kv[:, :r_kv]), kv[:, None, r_kv:]
        cos, sin = self.rope(positions)
        q_pe = ops.rotary_embedding(q_pe, cos, sin, interleaved=self.interleaved)
        k_pe = ops.rotary_embedding(k_pe, cos, sin, interleaved=self.interleaved)
        w = self.kv_b_proj.view(h, nope + a.v_head_dim, r_kv)
        q_latent = ops.batched_linear(q_nope, w[:, :nope].transpose(1, 2))  # [t, h, r_kv]
        ops.write_kv(cache[0], torch.cat([latent[:, None], k_pe], dim=-1), meta.slot_mapping)
        o = ops.paged_attention(torch.cat([q_latent, q_pe], dim=-1), cache[0], None, meta, self.scale, v_dim=r_kv)
        o = ops.batched_linear(o, w[:, nope:])  # [t, h, v]
        return ops.linear(o.reshape(t, -1), self.o_proj, self.o_bias)

    def slots(self, prefix: str) -> dict[str, Slot]:
        names = ["kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
        names += ["q_a_proj", "q_b_proj"] if self.a.q_lora_rank else ["q_proj"]
        out = {f"{prefix}.{n}.weight": Slot(getattr(self, n)) for n in names}
        biases = {"q_a_proj": self.q_a_bias, "kv_a_proj_with_mqa": self.kv_a_bias, "o_proj": self.o_bias}
        out |= {f"{prefix}.{n}.bias": Slot(b) for n, b in biases.items() if b is not None}
        out |= self.kv_a_layernorm.slots(f"{prefix}.kv_a_layernorm")
        if self.a.q_lora_rank:
            out |= self.q_a_layernorm.slots(f"{prefix}.q_a_layernorm")
        return out
