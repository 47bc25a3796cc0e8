"""Float64 answers for every contract op, on CPU.

Ops whose math is a single library call (embedding, linear, batched_linear, silu_and_mul) run the reference
backend on float64 copies of the inputs. Ops where the reference backend itself is what we want to check
(norms, rotary, attention, routing, experts, cache writes) are written here again, independently and as
plainly as possible: loops over sequences and tokens, gathers by explicit slot lists.
"""

from __future__ import annotations

import torch

from modelchip.runtime.backends.reference import ReferenceBackend
from modelchip.runtime.contract import AttentionMetadata

_REF = ReferenceBackend("cpu")


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _REF.embedding(ids.cpu(), _d(weight))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _REF.linear(_d(x), _d(weight), None if bias is None else _d(bias))


def batched_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _REF.batched_linear(_d(x), _d(weight))


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    return _REF.silu_and_mul(_d(gate_up))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # the contract fixes one rounding: the normalised x is cast to x.dtype before the weight multiplies it
    x64 = _d(x)
    normed = (x64 / torch.sqrt((x64 * x64).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    return _d(normed) * _d(weight)


def rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    x = _d(x)
    c, s = _d(cos)[:, None, :], _d(sin)[:, None, :]
    half = x.shape[-1] // 2
    # pair i rotates channels (first[i], second[i]): (2i, 2i+1) interleaved, (i, i + d/2) half-split
    first = torch.arange(0, 2 * half, 2) if interleaved else torch.arange(half)
    second = first + 1 if interleaved else first + half
    out = torch.empty_like(x)
    out[..., first] = x[..., first] * c - x[..., second] * s
    out[..., second] = x[..., second] * c + x[..., first] * s
    return out


def write_kv(cache: torch.Tensor, values: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """The cache after the write (returned, not in place)."""
    out = cache.detach().cpu().clone()
    block_size = out.shape[1]
    for i, slot in enumerate(slot_mapping.tolist()):
        out[slot // block_size, slot % block_size] = values[i].cpu().to(out.dtype)
    return out


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None, meta: AttentionMetadata,
                    scale: float, v_dim: int | None = None, window: int = 0) -> torch.Tensor:
    q, keys = _d(q), _d(k_cache)
    values = keys[..., :v_dim] if v_cache is None else _d(v_cache)
    heads, groups, bs = q.shape[1], keys.shape[2], meta.block_size
    group_of_head = torch.arange(heads) // (heads // groups)
    starts = meta.query_start_loc.tolist()
    out = torch.zeros(q.shape[0], heads, values.shape[-1], dtype=torch.float64)
    for s, ctx in enumerate(meta.context_lens.tolist()):
        table = meta.block_tables[s].tolist()
        blocks = [table[p // bs] for p in range(ctx)]
        offsets = [p % bs for p in range(ctx)]
        k, v = keys[blocks, offsets], values[blocks, offsets]  # [ctx, g, d]
        n = starts[s + 1] - starts[s]
        for i in range(n):
            pos = ctx - n + i  # absolute position of this query in its sequence
            lo = max(0, pos - window + 1) if window else 0
            kh, vh = k[lo:pos + 1][:, group_of_head], v[lo:pos + 1][:, group_of_head]  # [L, h, d]
            scores = torch.einsum("hd,lhd->hl", q[starts[s] + i], kh) * scale
            out[starts[s] + i] = torch.einsum("hl,lhd->hd", torch.softmax(scores, dim=-1), vh)
    return out


def moe_experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
    x, gate_up, down, weights = _d(x), _d(gate_up), _d(down), _d(weights)
    width = down.shape[2]
    out = torch.zeros(x.shape[0], down.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for k, e in enumerate(ids[t].tolist()):
            gu = gate_up[e] @ x[t]
            h = torch.nn.functional.silu(gu[:width]) * gu[width:]
            out[t] += weights[t, k] * (down[e] @ h)
    return out


def route_scores(router_logits: torch.Tensor, scoring: str, correction_bias: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores that become weights, scores that decide selection), float64."""
    logits = _d(router_logits)
    scores = torch.sigmoid(logits) if scoring == "sigmoid" else torch.softmax(logits, dim=-1)
    choice = scores if correction_bias is None else scores + _d(correction_bias)
    return scores, choice


def group_scores(choice: torch.Tensor, n_group: int, has_bias: bool) -> torch.Tensor:
    grouped = choice.view(choice.shape[0], n_group, -1)
    return grouped.topk(2, dim=-1).values.sum(-1) if has_bias else grouped.max(dim=-1).values


def sample_support(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """Probabilities [V] (float64) the sampler should draw from for one row."""
    probs = torch.softmax(_d(logits) / temperature, dim=-1)
    order = probs.argsort(descending=True)
    sorted_p = probs[order]
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if top_k > 0:
        keep[top_k:] = False
    keep &= (sorted_p.cumsum(0) - sorted_p) < top_p  # smallest prefix that covers top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = sorted_p[keep]
    return out / out.sum()
