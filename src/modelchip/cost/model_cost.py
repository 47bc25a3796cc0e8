"""A model's costs folded into the few sums the step-time model needs, computed once per model.

Layer lists are grouped by kind (attention projections, attention core, dense FFN, MoE), so a deployment is
costed with a handful of multiplications however many layers the model has.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from modelchip.cost import accounting, attention, ffn
from modelchip.cost.conventions import EXACT, Precision
from modelchip.spec.model import ModelSpec

# Backend op calls per attention block in the runtime's forward (two norms and the FFN counted apart):
# gqa: stacked qkv and o linears, 2 rotary, 2 write_kv, attention; mfa adds the low-rank query's norm and
# matmul; mla: q_a, q_a norm, q_b, kv_a, kv_a norm, 2 rotary, 2 absorptions, one latent write, attention, o.
OPS_PER_ATTENTION = {"gqa": 7, "mfa": 9, "mfa-kr": 8, "mla": 12, "linear": 6}


@dataclass(frozen=True)
class MoECost:
    layers: int
    experts: int
    top_k: int
    expert_params: int  # one routed expert (3 H I)
    shared_params: int  # the shared expert(s) of one layer
    router_params: int


@dataclass(frozen=True)
class ModelCost:
    name: str
    hidden: int
    vocab: int
    layers: int
    attn_params: int  # projection weights, all layers
    attn_norm_params: int
    dense_params: int  # dense FFN weights, all dense layers
    moe: MoECost | None
    embed_params: int
    lm_head_params: int  # separate weights unless tied
    kv_heads: int  # K/V heads of the softmax layers (MLA: 1 latent), for TP sharding of the cache
    kv_bytes_per_token: float  # cache bytes one token adds, all layers, in the deployment's KV format
    layer_op_calls: int  # backend op calls of one forward over all layers (runtime/models/decoder.py)
    spec: ModelSpec = field(repr=False)
    precision: Precision = field(repr=False)
    attention_kind: str = "gqa"  # the kind most layers use
    # each projection matmul's share of a layer's projection weights (the most common attention kind), and the
    # dense FFN layers: a per-call kernel floor is charged per call, not per summed group
    attn_call_fractions: tuple[float, ...] = (1.0,)
    dense_layers: int = 0
    # op calls of a step that are not matmuls (norms, rotary, KV writes, attention, activation, routing, embedding,
    # sampling): each pays a small kernel's per-call floor where one is measured
    small_op_calls: int = 0
    ffn_op_calls: int = 0  # the FFNs' share of layer_op_calls (attention-FFN disaggregation runs them apart)
    # attention accounting per (context, phase), memoised here: hashing the spec per lookup would dominate a plan
    _memo: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def op_calls(self) -> int:
        """Backend op calls of one step: the layers, plus embedding, final norm, LM head and sampling."""
        return self.layer_op_calls + 4

    def decode_attention(self, context: int) -> tuple[float, float]:
        """(core FLOPs, cache bytes read) per decoded token at `context` (exact convention)."""
        return self._accounted(context, "decode")

    def prefill_attention(self, prompt: int) -> tuple[float, float]:
        """(core FLOPs, cache bytes written) per prompt token of a `prompt`-token prefill."""
        return self._accounted(prompt, "prefill")

    def _accounted(self, tokens: int, phase: str) -> tuple[float, float]:
        key = (tokens, phase)
        if key not in self._memo:
            acc = accounting.account(self.spec, tokens, phase, self.precision, EXACT)
            self._memo[key] = (acc.attention_flops, acc.kv_bytes)
        return self._memo[key]


def model_cost(spec: ModelSpec, precision: Precision) -> ModelCost:
    H = spec.hidden_size
    attn = norms = dense = 0
    moe = None
    moe_layers = dense_layers = 0
    kv_heads = []
    op_calls = small = ffn_op_calls = 0
    for layer, n in Counter(spec.layers).items():
        a, f = layer.attention, layer.ffn
        attn_calls = OPS_PER_ATTENTION[a.kind] + 2 * a.qk_norm - (2 if a.kind == "mla" and not a.q_lora_rank else 0)
        ffn_calls = 3 if f.kind == "dense" else 3 + 3 * bool(f.shared_intermediate_size)  # router, route, experts
        op_calls += n * (2 + attn_calls + ffn_calls)
        ffn_op_calls += n * ffn_calls
        # matmuls: the projections, gate_up and down (dense and shared expert), the router and the routed experts
        ffn_matmuls = 2 if f.kind == "dense" else 2 + 2 * bool(f.shared_intermediate_size)
        small += n * (2 + attn_calls - len(attention.projection_calls(a, H)) + ffn_calls - ffn_matmuls)
        attn += n * attention.projection_weights(a, H)
        norms += n * (attention.params(a, H) - attention.projection_weights(a, H) + 2 * H)
        kv_heads.append(1 if a.kind == "mla" else a.num_kv_heads)
        if f.kind == "dense":
            dense += n * ffn.active_weights(f, H)
            dense_layers += n
        else:
            moe_layers += n
            moe = MoECost(0, f.num_experts, f.top_k, 3 * H * f.intermediate_size, 3 * H * f.shared_intermediate_size,
                          ffn.router_weights(f, H))
    kind = Counter(layer.attention for layer in spec.layers).most_common(1)[0][0]
    calls = attention.projection_calls(kind, H)
    if moe is not None:
        moe = MoECost(moe_layers, moe.experts, moe.top_k, moe.expert_params, moe.shared_params, moe.router_params)
    return ModelCost(
        name=spec.name, hidden=H, vocab=spec.vocab_size, layers=spec.num_layers, attn_params=attn,
        attn_norm_params=norms, dense_params=dense, moe=moe, embed_params=spec.vocab_size * H,
        lm_head_params=0 if spec.tie_word_embeddings else spec.vocab_size * H, kv_heads=min(kv_heads),
        kv_bytes_per_token=accounting.account(spec, 1, precision=precision).kv_cache_bytes_per_token,
        layer_op_calls=op_calls, spec=spec, precision=precision,
        attn_call_fractions=tuple(w / sum(calls) for w in calls), dense_layers=dense_layers,
        small_op_calls=small + 3,  # embedding, final norm, sampling (the LM head is a matmul)
        attention_kind=Counter(layer.attention.kind for layer in spec.layers).most_common(1)[0][0],
        ffn_op_calls=ffn_op_calls,
    )
