"""The grid of op cases: shapes that the model families really produce (decode rows, prefill blocks, mixed
batches, strided views the layers pass, and one long prefill per hot op, since kernels often switch
implementation with size), in every activation dtype asked for. Router logits and sampling
are float32 by contract, so their cases run once, in float32, whatever dtypes are asked for."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import replace

import torch

from modelchip.conformance.checks import Case, distribution, exact, greedy, route
from modelchip.runtime.contract import AttentionMetadata
from modelchip.runtime.layers.rotary import RotaryEmbedding


class Rand:
    """Seeded inputs, so a failing case is reproducible from its name."""

    def __init__(self, key: str):
        self.g = torch.Generator().manual_seed(zlib.crc32(key.encode()))

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0, dtype=torch.float32) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.g) * std + mean).to(dtype)

    def ints(self, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.g)

    def perm(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.g).tolist()


def _shape(**tensors: torch.Tensor) -> str:
    return " ".join(f"{k}{list(v.shape)}" for k, v in tensors.items())


def embedding(dt: torch.dtype) -> list[Case]:
    out = []
    for label, t, v, h in (("prefill", 7, 96, 48), ("decode", 1, 1000, 64)):
        r = Rand(f"embedding{label}")
        ids, w = r.ints(v, t), r.normal(v, h, dtype=dt)
        out.append(Case("embedding", label, dt, _shape(ids=ids, weight=w), (ids, w), judge=exact))
    return out


def linear(dt: torch.dtype) -> list[Case]:
    out = []
    for label, t, i, o, bias in (("decode", 1, 64, 96, False), ("prefill + bias", 17, 48, 128, True),
                                 ("wide reduction", 5, 256, 64, False), ("long prefill", 300, 576, 576, False)):
        r = Rand(f"linear{label}")
        x, w = r.normal(t, i, dtype=dt), r.normal(o, i, std=i ** -0.5, dtype=dt)
        b = r.normal(o, std=0.1, dtype=dt) if bias else None
        out.append(Case("linear", label, dt, _shape(x=x, w=w), (x, w, b)))
    return out


def router_linear() -> list[Case]:
    # MoE layers compute router logits with fp32 inputs in every model dtype; the result must stay fp32
    r = Rand("linear router")
    x, w = r.normal(9, 48), r.normal(8, 48, std=48 ** -0.5)
    return [Case("linear", "router logits (fp32 in every model)", torch.float32, _shape(x=x, w=w), (x, w))]


def batched_linear(dt: torch.dtype) -> list[Case]:
    r = Rand("batched_linear")
    x, w = r.normal(5, 4, 16, dtype=dt), r.normal(4, 24, 16, std=0.25, dtype=dt)
    # MLA passes q[..., :nope] and a transposed slice of kv_b_proj: both non-contiguous views
    q = r.normal(5, 4, 24, dtype=dt)[..., :16]
    kv_b = r.normal(4, 40, 24, std=0.25, dtype=dt)[:, :16].transpose(1, 2)
    return [Case("batched_linear", "per-head", dt, _shape(x=x, w=w), (x, w)),
            Case("batched_linear", "MLA absorb (strided views)", dt, _shape(x=q, w=kv_b), (q, kv_b))]


def rms_norm(dt: torch.dtype) -> list[Case]:
    out = []
    for label, shape, eps, std in (("rows", (7, 48), 1e-6, 1.0), ("per-head q/k norm", (3, 4, 16), 1e-6, 1.0),
                                   ("small activations", (5, 64), 1e-5, 0.03), ("decode, large", (1, 576), 1e-5, 8.0),
                                   ("long prefill", (300, 576), 1e-5, 1.0)):
        r = Rand(f"rms_norm{label}")
        x, w = r.normal(*shape, std=std, dtype=dt), r.normal(shape[-1], std=0.1, mean=1.0, dtype=dt)
        out.append(Case("rms_norm", f"{label}, eps {eps:g}", dt, _shape(x=x, w=w), (x, w, eps)))
    r = Rand("rms_norm latent")
    kv = r.normal(6, 24, dtype=dt)[:, :16]  # MLA normalises the latent slice of kv_a_proj's output
    w = r.normal(16, std=0.1, mean=1.0, dtype=dt)
    out.append(Case("rms_norm", "strided latent slice, eps 1e-6", dt, _shape(x=kv, w=w), (kv, w, 1e-6)))
    return out


def rotary_embedding(dt: torch.dtype) -> list[Case]:
    out = []
    for label, (t, h, d), interleaved, strided, max_pos in (
            ("half-split", (9, 4, 16), False, False, 500),
            ("half-split, decode at 4000", (1, 8, 64), False, False, 4001),
            ("interleaved (MLA k_pe)", (9, 1, 8), True, False, 500),
            ("interleaved, strided q_pe", (5, 4, 8), True, True, 500),
            ("half-split, long prefill", (300, 8, 64), False, False, 2000)):
        r = Rand(f"rotary{label}")
        positions = r.ints(max_pos, t) if t > 1 else torch.tensor([max_pos - 1])
        cos, sin = RotaryEmbedding(d, 10000.0)(positions)
        x = r.normal(t, h, 2 * d, dtype=dt)[..., d:] if strided else r.normal(t, h, d, dtype=dt)
        out.append(Case("rotary_embedding", label, dt, _shape(x=x, cos=cos), (x, cos, sin),
                        {"interleaved": interleaved}))
    return out


def silu_and_mul(dt: torch.dtype) -> list[Case]:
    out = []
    for label, t, width in (("prefill", 7, 128), ("decode", 1, 3072), ("long prefill", 300, 1024)):
        x = Rand(f"silu{label}").normal(t, width, std=2.0, dtype=dt)
        out.append(Case("silu_and_mul", label, dt, _shape(gate_up=x), (x,)))
    return out


def write_kv(dt: torch.dtype) -> list[Case]:
    out = []
    for label, blocks, bs, g, d, t in (("GQA", 6, 4, 2, 16, 7), ("MLA latent", 5, 4, 1, 24, 3)):
        r = Rand(f"write_kv{label}")
        cache, values = r.normal(blocks, bs, g, d, dtype=dt), r.normal(t, g, d, dtype=dt)
        slots = torch.tensor(r.perm(blocks * bs)[:t])
        out.append(Case("write_kv", label, dt, _shape(cache=cache, values=values), (cache, values, slots),
                        judge=exact, inplace_arg=0))
    return out


def _meta(r: Rand, seqs: list[tuple[int, int]], block_size: int, num_blocks: int) -> AttentionMetadata:
    """Metadata for sequences of (new tokens, context), their blocks handed out in shuffled order."""
    free = r.perm(num_blocks)
    tables, slots, starts = [], [], [0]
    for n, ctx in seqs:
        blocks = [free.pop() for _ in range(-(-ctx // block_size))]
        tables.append(blocks)
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(ctx - n, ctx)]
        starts.append(starts[-1] + n)
    width = max(map(len, tables)) + 1  # padding column of -1, as the runtime pads ragged tables
    return AttentionMetadata(torch.tensor(starts), torch.tensor([c for _, c in seqs]),
                             torch.tensor([t + [-1] * (width - len(t)) for t in tables]), torch.tensor(slots),
                             block_size)


def paged_attention(dt: torch.dtype) -> list[Case]:
    out = []
    # (label, heads, kv heads, d_k, d_v or None for values read from keys, seqs (new, ctx), scale, window)
    for label, h, g, dk, dv, seqs, scale, window in (
            ("prefill, GQA", 4, 2, 16, 16, [(11, 11)], 0.25, 0),
            ("mixed chunk/decode/prefill, MQA", 4, 1, 16, 16, [(3, 10), (1, 17), (6, 6)], 0.3, 0),
            ("decode batch, MHA, d_v != d_k", 4, 4, 16, 8, [(1, 5), (1, 9), (1, 1)], 0.37, 0),
            ("MLA latent values (v_cache None)", 4, 1, 24, None, [(2, 7), (1, 12)], 0.2, 0),
            ("sliding window 4", 4, 2, 16, 16, [(10, 10), (1, 13)], 0.25, 4),
            ("decode batch, GQA, window 4", 4, 2, 16, 16, [(1, 13), (1, 3), (1, 7)], 0.25, 4),
            ("decode batch, MLA latent values", 4, 1, 24, None, [(1, 12), (1, 5)], 0.2, 0),
            ("decode one sequence, GQA", 8, 2, 16, 16, [(1, 9)], 0.25, 0),
            ("long prefill, GQA", 8, 2, 64, 64, [(300, 300)], 0.125, 0)):
        r = Rand(f"attention{label}")
        bs, blocks = 4, 80
        meta = _meta(r, seqs, bs, blocks)
        q = r.normal(sum(n for n, _ in seqs), h, dk, dtype=dt)
        k_cache = r.normal(blocks, bs, g, dk, dtype=dt)  # unused slots hold garbage on purpose
        v_cache = r.normal(blocks, bs, g, dv, dtype=dt) if dv else None
        kwargs = {"v_dim": 16} if dv is None else {}
        if window:
            kwargs["window"] = window
        shape = _shape(q=q, k_cache=k_cache) + " seqs(new/ctx) " + ",".join(f"{n}/{c}" for n, c in seqs)
        out.append(Case("paged_attention", f"{label}, scale {scale}", dt, shape,
                        (q, k_cache, v_cache, meta, scale), kwargs))
    return out


def moe_experts(dt: torch.dtype) -> list[Case]:
    out = []
    for label, t, hidden, width, e, k in (("prefill", 9, 32, 16, 6, 2), ("decode, top-3", 1, 48, 24, 8, 3)):
        r = Rand(f"moe_experts{label}")
        x = r.normal(t, hidden, dtype=dt)
        gate_up = r.normal(e, 2 * width, hidden, std=hidden ** -0.5, dtype=dt)
        down = r.normal(e, hidden, width, std=width ** -0.5, dtype=dt)
        ids = torch.stack([torch.tensor(r.perm(e)[:k]) for _ in range(t)])
        weights = torch.softmax(r.normal(t, k), dim=-1)
        out.append(Case("moe_experts", label, dt, _shape(x=x, gate_up=gate_up, ids=ids),
                        (x, gate_up, down, weights, ids)))
    return out


def moe_route() -> list[Case]:
    out = []
    f32 = torch.float32
    # (label, tokens, experts, top_k, scoring, renormalise, groups, top groups, bias, scaling)
    for label, t, e, k, scoring, norm, ng, tg, bias, scaling in (
            ("softmax top-2 of 8, renormalised (Mixtral, Qwen3-MoE)", 13, 8, 2, "softmax", True, 1, 1, False, 1.0),
            ("softmax top-3 of 6, not renormalised (Step-3)", 5, 6, 3, "softmax", False, 1, 1, False, 1.0),
            ("sigmoid, bias, 4 groups keep 2, x2.5 (DeepSeek-V3)", 11, 16, 4, "sigmoid", True, 4, 2, True, 2.5),
            ("sigmoid, groups by max, no bias", 7, 8, 3, "sigmoid", False, 4, 2, False, 1.0),
            ("decode, one token", 1, 8, 2, "softmax", True, 1, 1, False, 1.0),
            ("tied logits", 16, 8, 2, "softmax", True, 1, 1, False, 1.0)):
        r = Rand(f"moe_route{label}")
        logits = r.normal(t, e, std=2.0)
        if label == "tied logits":
            logits = (logits * 2).round() / 2  # many exact ties: any tied choice is right
        kwargs = {"n_group": ng, "topk_group": tg, "scaling": scaling,
                  "correction_bias": r.normal(e, std=0.1) if bias else None}
        out.append(Case("moe_route", label, f32, _shape(logits=logits) + f" top_k={k}", (logits, k, scoring, norm),
                        kwargs, judge=route))
    return out


def sample() -> list[Case]:
    f32, i64 = torch.float32, torch.int64
    r = Rand("sample")
    logits = r.normal(4, 1000, std=3.0)
    out = [Case("sample", "temperature 0 (greedy)", f32, _shape(logits=logits),
                (logits, torch.zeros(4), torch.ones(4), torch.zeros(4, dtype=i64)), judge=greedy, seed=0),
           Case("sample", "per-row: greedy rows and top_k=1 rows", f32, _shape(logits=logits),
                (logits, torch.tensor([0.0, 1.0, 0.0, 0.7]), torch.ones(4), torch.tensor([0, 1, 0, 1])),
                judge=greedy, seed=1),
           Case("sample", "top_p 1e-4 (argmax only)", f32, _shape(logits=logits),
                (logits, torch.ones(4), torch.full((4,), 1e-4), torch.zeros(4, dtype=i64)), judge=greedy, seed=2)]
    n = 4000
    row = torch.tensor([[2.0, 1.5, 1.0, 0.2, -0.5, -1.0]])
    # probabilities at temperature 1: .44 .27 .16 .07 .04 .02, so top_p 0.8 keeps three tokens with no near-tie
    for label, temp, top_p, top_k in (("temperature 1.3, top_k 4", 1.3, 1.0, 4),
                                      ("temperature 1, top_p 0.8", 1.0, 0.8, 0)):
        out.append(Case("sample", label, f32, f"logits[{n},6]",
                        (row.expand(n, 6).contiguous(), torch.full((n,), temp), torch.full((n,), top_p),
                         torch.full((n,), top_k, dtype=i64)), judge=distribution, seed=3))
    return out


ACTIVATION_OPS: dict[str, Callable[[torch.dtype], list[Case]]] = {
    "embedding": embedding, "linear": linear, "batched_linear": batched_linear, "rms_norm": rms_norm,
    "rotary_embedding": rotary_embedding, "silu_and_mul": silu_and_mul, "write_kv": write_kv,
    "paged_attention": paged_attention, "moe_experts": moe_experts,
}
FLOAT32_OPS: dict[str, Callable[[], list[Case]]] = {"moe_route": moe_route, "sample": sample}


def prepared(cases: list[Case]) -> list[Case]:
    """The same linear cases with the weight handed through the backend's prepare_linear, as models do."""
    return [replace(c, label=f"{c.label}, prepared weight", prepare_arg=1) for c in cases]


def grid(dtypes: list[torch.dtype], ops: list[str], prepares_weights: bool = False,
         quantized_formats: frozenset[str] = frozenset()) -> list[Case]:
    """Every case for these ops and dtypes, in contract order (linear twice for a backend that prepares
    weights: models pass it prepared handles, router and tests plain tensors; then linear with a weight in
    each quantized format the backend takes)."""
    from modelchip.conformance.quant_cases import quantized_linear

    cases: list[Case] = []
    for op in ops:
        if op in FLOAT32_OPS:
            cases += FLOAT32_OPS[op]()
            continue
        for dt in dtypes:
            cases += ACTIVATION_OPS[op](dt)
            if op == "linear" and prepares_weights:
                cases += prepared(linear(dt))
            if op == "linear":
                cases += quantized_linear(dt, quantized_formats, prepares_weights)
        if op == "linear" and torch.float32 not in dtypes:
            cases += router_linear()
    return cases
