"""The reference backend: every contract op in plain PyTorch, on any torch device.

Written for correctness and readability; other backends are checked against it. Reductions that decide
numerics (norms, softmax, routing) run in float32 whatever the activation dtype.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from modelchip.runtime.contract import AttentionMetadata, CacheLayout
from modelchip.runtime.dequant import quantized_linear
from modelchip.runtime.quant import FORMATS, QuantizedWeight


class ReferenceBackend:
    name = "reference"
    quantized_formats = frozenset(FORMATS)

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.fallbacks: Counter[str] = Counter()  # the slow paths taken, by reason (conformance shows them)

    def embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, weight)

    def linear(self, x: torch.Tensor, weight: torch.Tensor | QuantizedWeight,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(weight, QuantizedWeight):  # correct and slow: the whole weight unpacked on every call
            self.fallbacks[f"linear: {weight.format} weight dequantized per call"] += 1
            return quantized_linear(x, weight, bias)
        return F.linear(x, weight, bias)

    def batched_linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.einsum("thi,hoi->tho", x, weight)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        # Llama's definition: cast back before the weight; in bf16 the other order drifts off the trained model
        return weight.to(x.dtype) * x32.to(x.dtype)

    def rotary_embedding(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         interleaved: bool = False) -> torch.Tensor:
        cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
        if interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def allocate_kv_cache(self, layout: CacheLayout, num_blocks: int, block_size: int,
                          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = torch.zeros(num_blocks, block_size, layout.heads, layout.k_dim, dtype=dtype, device=self.device)
        v = (torch.zeros(num_blocks, block_size, layout.heads, layout.v_dim, dtype=dtype, device=self.device)
             if layout.separate_v else None)
        return k, v

    def synchronize(self) -> None:
        """Wait for the device's queued work: only torch's accelerator modules need it (CPU ops are done)."""
        if self.device.type != "cpu":
            accel = getattr(torch, self.device.type, None)
            if accel is not None and hasattr(accel, "synchronize"):
                accel.synchronize(self.device)

    def capture_step(self, step, batch_size: int):
        return None  # eager: nothing to capture

    def fuse_decoder_layers(self, layers):
        return None  # the ops one by one: the reference is what a fused stack is checked against

    def write_kv(self, cache: torch.Tensor, values: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slot_mapping, values.to(cache.dtype))

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None,
                        meta: AttentionMetadata, scale: float, v_dim: int | None = None,
                        window: int = 0) -> torch.Tensor:
        if meta.is_decode:  # one new token per sequence: decode them all at once
            return self._decode_attention(q, k_cache, v_cache, meta, scale, v_dim, window)
        heads = q.shape[1]
        groups = k_cache.shape[2]
        out = []
        starts = meta.query_start_loc_cpu.tolist()  # host copies: no device read-back per layer
        for s, ctx in enumerate(meta.context_lens_cpu.tolist()):
            qs = q[starts[s]:starts[s + 1]]  # [n, h, dk]
            n = qs.shape[0]
            blocks = meta.block_tables[s, : -(-ctx // meta.block_size)]
            k = k_cache[blocks].flatten(0, 1)[:ctx]  # [ctx, g, dk]
            v = (k[..., :v_dim] if v_cache is None else v_cache[blocks].flatten(0, 1)[:ctx])
            k = k.repeat_interleave(heads // groups, dim=1).transpose(0, 1)  # [h, ctx, dk]
            v = v.repeat_interleave(heads // groups, dim=1).transpose(0, 1)
            scores = torch.matmul(qs.transpose(0, 1).float(), k.float().transpose(1, 2)) * scale  # [h, n, ctx]
            ends = torch.arange(ctx - n + 1, ctx + 1, device=q.device)[:, None]  # a query sees itself and before
            scores = scores.masked_fill(~visible(ends, ctx, window), float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            out.append(torch.matmul(probs, v.float()).transpose(0, 1).to(q.dtype))  # [n, h, dv]
        return torch.cat(out, dim=0)

    def _decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None,
                          meta: AttentionMetadata, scale: float, v_dim: int | None, window: int) -> torch.Tensor:
        """Each sequence's one query token at position context_len - 1 against its whole cache. The caches are
        gathered into one padded batch so a decode step costs a few ops, not a few per sequence."""
        tables, longest = decode_blocks(meta)
        k, v = gather_blocks(k_cache, v_cache, tables, longest, v_dim)  # [S, L, g, dk], [S, L, g, dv]
        s, length, groups, dk = k.shape
        heads = q.shape[1]
        qg = q.float().view(s, groups, heads // groups, dk)  # query head i reads K/V group i // (h / g)
        scores = torch.matmul(qg, k.float().permute(0, 2, 3, 1)) * scale  # [S, g, h/g, L]
        mask = visible(meta.context_lens[:, None], length, window)[:, None, None, :]
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v.float().transpose(1, 2))  # [S, g, h/g, dv]
        return out.reshape(s, heads, v.shape[-1]).to(q.dtype)

    def moe_route(self, router_logits: torch.Tensor, top_k: int, scoring: str, norm_topk_prob: bool,
                  n_group: int = 1, topk_group: int = 1, correction_bias: torch.Tensor | None = None,
                  scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        logits = router_logits.float()
        scores = torch.sigmoid(logits) if scoring == "sigmoid" else torch.softmax(logits, dim=-1)
        choice = scores if correction_bias is None else scores + correction_bias.float()
        if n_group > 1 and topk_group < n_group:
            t, e = choice.shape
            grouped = choice.view(t, n_group, e // n_group)
            if correction_bias is not None:  # DeepSeek-V3: a group scores by its best two experts
                group_scores = grouped.topk(2, dim=-1).values.sum(-1)
            else:
                group_scores = grouped.max(dim=-1).values
            keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(topk_group, dim=-1).indices, 1.0)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(e // n_group, dim=1), float("-inf"))
        ids = choice.topk(top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * scaling, ids

    def moe_experts(self, x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
                    ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], down.shape[1], dtype=torch.float32, device=x.device)
        for e in ids.unique().tolist():
            tok, slot = (ids == e).nonzero(as_tuple=True)
            h = self.silu_and_mul(F.linear(x[tok], gate_up[e]))
            y = F.linear(h, down[e])
            out.index_add_(0, tok, y.float() * weights[tok, slot, None])
        return out.to(x.dtype)

    def sample(self, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
               top_k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits = logits.float()
        greedy = logits.argmax(dim=-1)
        if bool((temperature <= 0).all()):
            return greedy
        scaled = logits / temperature.clamp_min(1e-6)[:, None]
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        ranks = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
        cut = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token once the tokens ranked above it already cover top_p
        cut |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
        cut[:, 0] = False  # the most likely token always stays (top_p 0, or one below float32's range, keeps it)
        probs = probs.masked_fill(cut, 0.0)
        picked = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)
        sampled = order.gather(1, picked[:, None]).squeeze(-1)
        return torch.where(temperature <= 0, greedy, sampled)


def visible(ends: torch.Tensor, length: int, window: int) -> torch.Tensor:
    """[queries, length] mask from `ends` [queries, 1]: a query whose sequence holds `ends` tokens (itself
    last) sees positions < ends, and only the last `window` of them when window > 0."""
    pos = torch.arange(length, device=ends.device)[None, :]
    seen = pos < ends
    if window:
        seen &= pos >= ends - window
    return seen


def decode_blocks(meta: AttentionMetadata) -> tuple[torch.Tensor, int]:
    """(every sequence's block ids up to the longest context [S, blocks]; that longest context L). -1 padding
    becomes block 0, whose positions the mask hides."""
    longest = meta.max_context_len  # the host copy: reading the device tensor would sync every layer
    return meta.block_tables[:, :-(-longest // meta.block_size)].clamp_min(0), longest


def gather_blocks(k_cache: torch.Tensor, v_cache: torch.Tensor | None, tables: torch.Tensor, longest: int,
                  v_dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks `decode_blocks` names, as one padded batch [S, L, g, d] of K and of V; positions past a
    sequence's context hold other blocks' data and must be masked."""
    s, ids = tables.shape[0], tables.flatten()
    # index_select copies whole blocks; several times faster than advanced indexing for the same gather
    k = k_cache.index_select(0, ids).view(s, -1, *k_cache.shape[2:])[:, :longest]
    if v_cache is None:
        return k, k[..., :v_dim]
    return k, v_cache.index_select(0, ids).view(s, -1, *v_cache.shape[2:])[:, :longest]
