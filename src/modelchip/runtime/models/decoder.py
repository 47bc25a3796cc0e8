"""One decoder-only model for every family the runtime supports, built from the same ModelSpec the cost
model reads: each layer's attention and FFN kinds come from the spec, checkpoint names from the family."""

from __future__ import annotations

import torch
from torch import nn

from modelchip.errors import ModelchipError
from modelchip.runtime.contract import AttentionMetadata, DecoderLayerWeights
from modelchip.runtime.distributed.layout import ParallelLayout
from modelchip.runtime.distributed.tensor_parallel import Shard, check_family, tp_of, vocab_rows
from modelchip.runtime.layers.attention import GQAAttention, MFAAttention, MLAAttention
from modelchip.runtime.layers.base import Layer, Slot, prepare_linear_weights
from modelchip.runtime.layers.ffn import GatedMLP, MoE
from modelchip.runtime.layers.norm import RMSNorm
from modelchip.runtime.layers.rotary import RotaryEmbedding
from modelchip.runtime.models.switches import check_supported
from modelchip.spec.model import LayerSpec, ModelSpec

# model_type -> checkpoint naming flavour
FAMILIES = {
    "llama": "hf", "mistral": "hf", "qwen2": "hf", "qwen3": "hf", "qwen3_moe": "hf", "mixtral": "mixtral",
    "deepseek_v3": "hf", "kimi_k2": "hf", "step3_text": "step3",
}


def _mla_scale(spec: ModelSpec, head_dim: int) -> float:
    # YaRN checkpoints (DeepSeek-V3) also sharpen the softmax by mscale(factor, mscale_all_dim)^2
    scale = head_dim ** -0.5
    s = spec.rope_scaling or {}
    if s.get("rope_type", s.get("type")) == "yarn" and s.get("mscale_all_dim"):
        import math

        m = 0.1 * float(s["mscale_all_dim"]) * math.log(float(s["factor"])) + 1.0 if float(s["factor"]) > 1 else 1.0
        scale *= m * m
    return scale


def build_ffn(ops, spec: ModelSpec, layer: LayerSpec, dtype) -> Layer:
    """The layer's FFN as the spec says: a gated MLP (split when tensor parallel) or a mixture of experts."""
    f = layer.ffn
    if f.kind == "dense":
        return GatedMLP(ops, spec.hidden_size, f.intermediate_size, dtype, f.bias, tensor_parallel=True)
    return MoE(ops, spec.hidden_size, f, dtype)


def ffn_slots(mlp: Layer, prefix: str, flavor: str) -> dict[str, Slot]:
    """Checkpoint names of a layer's FFN (`prefix` is the layer's, e.g. model.layers.3)."""
    return mlp.slots(prefix, flavor) if isinstance(mlp, MoE) else mlp.slots(f"{prefix}.mlp")


def _data(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.data


class DecoderLayer(Layer):
    def __init__(self, ops, spec: ModelSpec, layer: LayerSpec, ropes: dict, dtype, mlp: Layer | None = None):
        super().__init__(ops, dtype)
        a, hidden, eps = layer.attention, spec.hidden_size, spec.rms_norm_eps
        self.flavor = FAMILIES[spec.family]
        self.input_layernorm = RMSNorm(ops, hidden, eps, dtype)
        self.post_attention_layernorm = RMSNorm(ops, hidden, eps, dtype)
        if a.kind == "gqa":
            self.self_attn = GQAAttention(ops, hidden, a, eps, ropes[a.head_dim], dtype)
        elif a.kind == "mfa" or a.kind == "mfa-kr":
            self.self_attn = MFAAttention(ops, hidden, a, eps, ropes[a.head_dim], dtype)
        elif a.kind == "mla":
            self.self_attn = MLAAttention(ops, hidden, a, eps, ropes[a.qk_rope_head_dim], dtype,
                                          interleaved_rope=bool(spec.config.get("rope_interleave", True)),
                                          scale=_mla_scale(spec, a.head_dim))
        else:
            raise ModelchipError(f"the runtime has no {a.kind!r} attention")
        # `mlp` given: the FFN lives elsewhere (attention-FFN disaggregation puts a link to the FFN ranks here)
        self.mlp = mlp if mlp is not None else build_ffn(ops, spec, layer, dtype)

    def forward(self, h, positions, meta, cache):
        if not h.shape[0]:  # a data-parallel rank with no sequences this step: it only joins the MoE collectives
            return self.mlp(h) if isinstance(self.mlp, MoE) else h
        h = h + self.self_attn(self.input_layernorm(h), positions, meta, cache)
        return h + self.mlp(self.post_attention_layernorm(h))

    def slots(self, prefix: str) -> dict[str, Slot]:
        out = self.input_layernorm.slots(f"{prefix}.input_layernorm")
        out |= self.post_attention_layernorm.slots(f"{prefix}.post_attention_layernorm")
        out |= self.self_attn.slots(f"{prefix}.self_attn")
        return out | ffn_slots(self.mlp, prefix, self.flavor)


class DecoderLM(Layer):
    LINEAR_WEIGHTS = ("lm_head",)

    def __init__(self, ops, spec: ModelSpec, dtype: torch.dtype):
        super().__init__(ops, dtype)
        if spec.family not in FAMILIES:
            raise ModelchipError(
                f"the runtime cannot run model_type {spec.family!r} (the cost model can); runtime families: "
                + ", ".join(sorted(FAMILIES)))
        check_supported(spec.config, spec.family)
        self.tp_rank, self.tp_size = tp_of(ops)
        check_family(spec, getattr(ops, "layout", None) or ParallelLayout(tensor_parallel_size=self.tp_size))
        self.spec = spec
        ropes: dict[int, RotaryEmbedding] = {}
        for layer in spec.layers:
            a = layer.attention
            dim = a.qk_rope_head_dim if a.kind == "mla" else a.head_dim
            if dim not in ropes:
                ropes[dim] = RotaryEmbedding(dim, spec.rope_theta, spec.rope_scaling)
        # vocabulary parallel: this rank's rows [vocab_start, vocab_stop), padded to the same count on every rank
        self.vocab_start, self.vocab_stop, rows = vocab_rows(spec.vocab_size, self.tp_rank, self.tp_size)
        self.embed_tokens = self._vocab_param(rows, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(ops, spec, layer, ropes, dtype, self._remote_ffn(i))
                                    for i, layer in enumerate(spec.layers))
        self.norm = RMSNorm(ops, spec.hidden_size, spec.rms_norm_eps, dtype)
        self.lm_head = (self.embed_tokens if spec.tie_word_embeddings
                        else self._vocab_param(rows, spec.hidden_size))
        self.fused_stack = None  # the backend's stack of every layer, once weights are prepared (prepare_weights)

    def _remote_ffn(self, index: int) -> Layer | None:
        """The FFN of layer `index` when it is computed elsewhere (a subclass's hook); None builds it here."""
        return None

    def _vocab_param(self, rows: int, hidden: int) -> nn.Parameter:
        w = self.p(rows, hidden)
        if self.vocab_stop - self.vocab_start < rows:
            w.data.zero_()  # the padding rows of the last rank: never loaded, must not be garbage
        return w

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                caches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """Hidden states [T, H] after the final norm, for the flattened new tokens of every sequence."""
        h = self._embed(ids)
        fused = self._run_fused(h, positions, meta, caches) if self.fused_stack is not None and h.shape[0] else None
        if fused is not None:
            h = fused
        else:
            for layer, cache in zip(self.layers, caches, strict=True):
                h = layer(h, positions, meta, cache)
        return self.norm(h) if h.shape[0] else h

    def _run_fused(self, h, positions, meta, caches) -> torch.Tensor | None:
        """Every layer in the backend's fused stack (contract: fuse_decoder_layers), or None to run them op by op."""
        cos, sin = self.layers[0].self_attn.rope(positions)
        return self.fused_stack(h, cos, sin, meta, caches)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.ops.embedding(ids, self.embed_tokens)
        # vocabulary-parallel: rows this rank does not own come out zero; the all-reduce fills them in
        mine = (ids >= self.vocab_start) & (ids < self.vocab_stop)
        local = torch.where(mine, ids - self.vocab_start, torch.zeros_like(ids))
        h = self.ops.embedding(local, self.embed_tokens)
        return self.ops.comm.all_reduce(h * mine[:, None].to(h.dtype))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.ops.linear(hidden, self.lm_head).float()
        # each rank's vocabulary rows, gathered in rank order; the last rank's padding cut off
        part = self.ops.linear(hidden, self.lm_head).float()
        return self.ops.comm.all_gather(part, dim=-1)[:, :self.spec.vocab_size]

    def slots(self) -> dict[str, Slot]:
        rows = self.vocab_stop - self.vocab_start
        vocab = (Slot(self.embed_tokens, (slice(0, rows),), Shard(0, self.vocab_start, self.vocab_stop,
                                                                   self.spec.vocab_size))
                 if self.tp_size > 1 else Slot(self.embed_tokens))
        out = {"model.embed_tokens.weight": vocab}
        for i, layer in enumerate(self.layers):
            out |= layer.slots(f"model.layers.{i}")
        out |= self.norm.slots("model.norm")
        if not self.spec.tie_word_embeddings:
            out["lm_head.weight"] = Slot(self.lm_head, vocab.index, vocab.source)
        return out

    def prepare_weights(self) -> int:
        """Let the backend lay out its linear weights once (contract: prepare_linear), then offer it the layers
        to run as one stack (contract: fuse_decoder_layers); after loading."""
        count = prepare_linear_weights(self, self.ops)
        layers = self._standard_layers()
        self.fused_stack = self.ops.fuse_decoder_layers(layers) if layers else None
        return count

    def _standard_layers(self) -> list[DecoderLayerWeights] | None:
        """The layers as `DecoderLayerWeights` when every one is GQA + a gated MLP on this one process with one
        rotary table (what a fused stack computes), else None."""
        if self.tp_size > 1 or getattr(self.ops, "layout", None) is not None:
            return None
        out = []
        for layer in self.layers:
            a, mlp = layer.self_attn, layer.mlp
            if type(a) is not GQAAttention or type(mlp) is not GatedMLP or a.rope is not self.layers[0].self_attn.rope:
                return None
            out.append(DecoderLayerWeights(
                input_norm=layer.input_layernorm.weight.data, post_norm=layer.post_attention_layernorm.weight.data,
                eps=layer.input_layernorm.eps, qkv=a.qkv_proj, qkv_bias=_data(a.qkv_bias), o_proj=a.o_proj,
                o_bias=_data(a.o_bias), gate_up=mlp.gate_up_proj, gate_up_bias=_data(mlp.gate_up_bias),
                down=mlp.down_proj, down_bias=_data(mlp.down_bias),
                q_norm=a.q_norm.weight.data if a.q_norm is not None else None,
                k_norm=a.k_norm.weight.data if a.k_norm is not None else None,
                num_heads=a.heads.heads, num_kv_heads=a.heads.kv_heads, head_dim=a.a.head_dim, scale=a.scale,
                window=a.a.window))
        return out

    def cache_layouts(self):
        return [layer.self_attn.layout for layer in self.layers]
