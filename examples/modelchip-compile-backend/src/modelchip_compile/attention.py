"""Paged attention without the reference's per-head copies of K/V: decode batches run as one grouped matmul
over all sequences (the reference loops over sequences), prefill runs on torch's fused (flash) attention
with shared K/V heads. Measured on one core of this CPU (SmolLM2's 9 query / 3 K/V heads): 1.3-2.1x faster
than the reference's attention at decode (1-16 sequences, 100-1000 tokens), 2.4x at a 512-token prefill.
Scores, softmax and the sum over values stay in float32, as the contract requires."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modelchip.runtime.contract import AttentionMetadata


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None, meta: AttentionMetadata,
                    scale: float, v_dim: int | None = None, window: int = 0) -> torch.Tensor:
    if q.shape[0] == meta.num_seqs > 1:  # one new token per sequence: decode, all sequences at once
        ctx = meta.context_lens
        width = -(-int(ctx.max()) // meta.block_size)
        tables = meta.block_tables[:, :width].clamp_min(0)  # padding (-1) reads block 0, masked below
        k = k_cache[tables].flatten(1, 2)  # [S, L, g, d]
        v = k[..., :v_dim] if v_cache is None else v_cache[tables].flatten(1, 2)
        pos = torch.arange(k.shape[1], device=q.device)[None, :]
        mask = pos < ctx[:, None]
        if window:
            mask &= pos >= ctx[:, None] - window
        return _attend(q[:, None], k, v, mask[:, None, :], scale)[:, 0]
    out = []
    starts = meta.query_start_loc.tolist()
    for s, ctx in enumerate(meta.context_lens.tolist()):
        qs = q[starts[s]:starts[s + 1]]
        n = qs.shape[0]
        blocks = meta.block_tables[s, : -(-ctx // meta.block_size)]
        k = k_cache[blocks].flatten(0, 1)[:ctx]  # [ctx, g, d]
        v = k[..., :v_dim] if v_cache is None else v_cache[blocks].flatten(0, 1)[:ctx]
        mask = None
        if n == 1 and not window:  # a single sequence's decode: nothing to mask
            out.append(_attend(qs[None], k[None], v[None], None, scale)[0])
            continue
        if n != ctx or window:  # a chunk after cached tokens, or a window: not the plain causal square
            q_pos = torch.arange(ctx - n, ctx, device=q.device)[:, None]
            k_pos = torch.arange(ctx, device=q.device)[None, :]
            mask = k_pos <= q_pos
            if window:
                mask &= k_pos > q_pos - window
        out.append(_flash(qs, k, v, mask, scale))
    return torch.cat(out, dim=0)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """One sequence: q [n, h, d], k [L, g, d], v [L, g, dv] -> [n, h, dv]; causal when mask is None."""
    # fp32 inputs keep the fused kernel's softmax and value sum in fp32 (in bf16 it would round probabilities)
    qf, kf, vf = (t.float().transpose(0, 1)[None] for t in (q, k, v))
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, is_causal=mask is None and q.shape[0] > 1,
                                         scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1).to(q.dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
            ) -> torch.Tensor:
    """q [B, n, h, d], k [B, L, g, d], v [B, L, g, dv], mask [B, n, L] (True: visible) -> [B, n, h, dv]."""
    b, n, h, d = q.shape
    length, g, dv = k.shape[1], k.shape[2], v.shape[-1]
    r = h // g  # query heads per K/V head
    qg = q.float().view(b, n, g, r, d).permute(0, 2, 3, 1, 4).reshape(b, g, r * n, d)
    scores = torch.matmul(qg, k.float().permute(0, 2, 3, 1)) * scale  # [b, g, r*n, L]
    if mask is not None:
        scores = scores.view(b, g, r, n, length).masked_fill(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(b, g, r * n, length)
    out = torch.matmul(probs, v.float().permute(0, 2, 1, 3))  # [b, g, r*n, dv]
    return out.view(b, g, r, n, dv).permute(0, 3, 1, 2, 4).reshape(b, n, h, dv).to(q.dtype)
