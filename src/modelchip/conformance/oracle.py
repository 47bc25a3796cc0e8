"""Float64 answers for every contract op, on CPU.

Ops whose math is a single library call (embedding, linear, batched_linear, silu_and_mul) run the reference
backend on float64 copies of the inputs. Ops where the reference backend itself is what we want to check
(norms, rotary, attention, routing, experts, cache writes) are written here again, independently and as
plainly as possible: loops over sequences and tokens, gathers by explicit slot lists. A quantized linear
weight is decoded here independently of the runtime's dequantizers: GGUF blocks by the gguf package's own
dequantizer, FP8 and INT8 by plain numpy.
"""

from __future__ import annotations

import numpy as np
import torch

from modelchip.runtime.backends.reference import ReferenceBackend
from modelchip.runtime.contract import AttentionMetadata
from modelchip.runtime.quant import GGUF_BLOCKS, QuantizedWeight

_REF = ReferenceBackend("cpu")


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _REF.embedding(ids.cpu(), _d(weight))


def linear(x: torch.Tensor, weight: torch.Tensor | QuantizedWeight, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    if isinstance(weight, QuantizedWeight):
        x64 = _d(x)
        if weight.activation == "int8_dynamic_token":
            x64 = w8a8_activations(x)
        return _REF.linear(x64, dequantized_weight(weight), None if bias is None else _d(bias))
    return _REF.linear(_d(x), _d(weight), None if bias is None else _d(bias))


def dequantized_weight(w: QuantizedWeight) -> torch.Tensor:
    """The float64 weight [out, in] a QuantizedWeight stands for, decoded independently of the runtime: GGUF
    blocks by the gguf package's own dequantizer, FP8 bits and INT8 scales by plain numpy."""
    data = w.data.detach().cpu()
    if w.format in GGUF_BLOCKS:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        dense = dequantize(data.numpy(), GGMLQuantizationType[w.format.upper()]).astype(np.float64)
    elif w.format == "fp8_block":
        bo, bi = w.block_shape
        scales = w.scales.detach().cpu().double().numpy()
        rows, cols = np.arange(w.out_features) // bo, np.arange(w.in_features) // bi
        dense = e4m3_values(data.view(torch.uint8).numpy()) * scales[rows][:, cols]
    else:
        dense = data.numpy().astype(np.float64) * w.scales.detach().cpu().double().numpy()[:, None]
    return torch.from_numpy(np.ascontiguousarray(dense)).reshape(w.out_features, w.in_features)


def e4m3_values(bits: np.ndarray) -> np.ndarray:
    """float64 values of float8_e4m3fn bytes: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is
    subnormal (m/8 * 2^-6); 0x7F/0xFF are NaN (the fn variant has no infinities)."""
    b = bits.astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp, man = (b >> 3) & 0xF, b & 0x7
    value = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp - 7))
    return np.where((b & 0x7F) == 0x7F, np.nan, sign * value)


def w8a8_activations(x: torch.Tensor) -> torch.Tensor:
    """x as W8A8 quantizes it, float64: per token, scale = max|x| / 127 and q = round-half-even(x * 127 /
    max|x|), the scale and product taken in float32 as the format's kernels define them (so the oracle's
    integers are the kernels' integers; everything after is float64)."""
    x32 = x.detach().cpu().float()
    amax = x32.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(x32 * inv).clamp(-128, 127)
    return q.double() * (amax / 127.0).double()


def activation_allowance(x: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
    """[T, out] float64: the error a kernel may add by quantizing activations the way the format's kernels
    do. GGUF and INT8 kernels (llama.cpp's, vLLM's) multiply int8 activations, rounded to nearest on a scale
    no finer than max|x_t| / 127: at most half that quantum per element, a whole one under W8A8 (whose
    oracle already rounded them; a kernel may round a tie the other way). FP8 kernels (DeepSeek's) round
    activations to e4m3: relative error 2^-4 per element."""
    x64, wabs = _d(x).abs(), dequantized_weight(w).abs()
    if w.format == "fp8_block":
        return 2.0 ** -4 * (x64 @ wabs.T)
    quantum = x64.amax(dim=-1, keepdim=True) / 127.0
    return (1.0 if w.activation else 0.5) * quantum * wabs.sum(dim=1)[None, :]


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
