"""The cost model's per-token FLOPs, parameters, weight bytes and cache bytes equal what the runtime really
does, for every runtime family (GQA dense and MoE, MLA, MFA: the conformance kit's tiny models).

FLOPs are counted by torch's FlopCounterMode over the runtime's real forward and compared with
modelchip.cost.accounting under the exact convention (router and LM head counted, MLA values 512-wide).

Convention for causal attention, on both sides: the useful triangle. Prompt position i attends to i + 1
tokens, as a causal kernel (flash attention) computes it. The reference backend computes the full masked
square for readability, so while counting, its paged_attention is replaced by `rowwise_attention` below,
which computes each query against only the keys it sees; the model's output is checked to be unchanged, so
the counted work is the runtime's own attention, minus the masked-out products.
"""

import pytest

torch = pytest.importorskip("torch")
from tiny_configs import CONFIGS  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from modelchip.cost import accounting  # noqa: E402
from modelchip.cost.conventions import EXACT, Precision  # noqa: E402
from modelchip.runtime.backends import get_backend  # noqa: E402
from modelchip.runtime.backends.reference import visible  # noqa: E402
from modelchip.runtime.contract import AttentionMetadata  # noqa: E402
from modelchip.runtime.kv_cache import KVCache  # noqa: E402
from modelchip.runtime.models.decoder import DecoderLM  # noqa: E402
from modelchip.spec import families  # noqa: E402

CONTEXT = 37
PROMPT = 40
BLOCK = 8
TIGHT = 1e-9  # both sides count whole multiply-adds: any difference is a real disagreement


def _model(family: str):
    spec = families.read(CONFIGS[family], family)
    torch.manual_seed(0)
    model = DecoderLM(get_backend("reference"), spec, torch.float32)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return spec, model


def _step(model, tokens: int, context: int):
    """Run `tokens` new tokens ending at `context` through the paged cache; hidden states [tokens, H]."""
    blocks = -(-context // BLOCK)
    cache = KVCache(model.ops, model.cache_layouts(), blocks, BLOCK, torch.float32)
    positions = torch.arange(context - tokens, context)
    meta = AttentionMetadata(torch.tensor([0, tokens]), torch.tensor([context]), torch.arange(blocks)[None],
                             positions, BLOCK)
    with torch.inference_mode():
        # a prompt's tokens, or a decode token whose cache the step before would have written (left zero here)
        return model(positions % model.spec.vocab_size, positions, meta, cache.layers)


def rowwise_attention(q, k_cache, v_cache, meta, scale, v_dim=None, window=0):
    """paged_attention computing each query against exactly the keys it sees: the useful triangle."""
    heads, groups = q.shape[1], k_cache.shape[2]
    out = []
    starts = meta.query_start_loc.tolist()
    for s, ctx in enumerate(meta.context_lens.tolist()):
        blocks = meta.block_tables[s, : -(-ctx // meta.block_size)]
        k = k_cache[blocks].flatten(0, 1)[:ctx]
        v = k[..., :v_dim] if v_cache is None else v_cache[blocks].flatten(0, 1)[:ctx]
        k = k.repeat_interleave(heads // groups, dim=1).transpose(0, 1)  # [h, ctx, dk]
        v = v.repeat_interleave(heads // groups, dim=1).transpose(0, 1)
        n = starts[s + 1] - starts[s]
        for i in range(n):
            seen = visible(torch.tensor([[ctx - n + 1 + i]]), ctx, window)[0].nonzero()[:, 0]
            lo, hi = int(seen[0]), int(seen[-1]) + 1
            scores = torch.matmul(q[starts[s] + i][:, None], k[:, lo:hi].transpose(1, 2)) * scale  # [h, 1, L]
            out.append(torch.matmul(torch.softmax(scores, dim=-1), v[:, lo:hi]).transpose(0, 1))  # [1, h, dv]
    return torch.cat(out, dim=0)


def _counted(model, tokens: int, context: int) -> tuple[float, torch.Tensor]:
    """(FLOPs of the forward with triangle-counted attention, its hidden states), checked against the
    backend's own attention."""
    expected = _step(model, tokens, context)
    ops = model.ops
    ops.paged_attention = rowwise_attention  # instance attribute: this test's model only
    try:
        with FlopCounterMode(display=False) as counter:
            hidden = _step(model, tokens, context)
    finally:
        del ops.paged_attention
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
    return counter.get_total_flops(), hidden


def _without_head(acc) -> float:
    return acc.total_flops - acc.lm_head_flops


def _head_flops(model, hidden) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.logits(hidden)
    return counter.get_total_flops()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_decode_flops_match_accounting(family):
    spec, model = _model(family)
    flops, hidden = _counted(model, 1, CONTEXT)
    acc = accounting.account(spec, CONTEXT, convention=EXACT)
    assert flops == pytest.approx(_without_head(acc), rel=TIGHT)
    assert _head_flops(model, hidden) == pytest.approx(acc.lm_head_flops, rel=TIGHT)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_prefill_flops_match_accounting(family):
    # a causal prefill of P tokens does the work of decoding at contexts 1..P (the triangle), and needs the
    # logits of its last token only
    spec, model = _model(family)
    flops, hidden = _counted(model, PROMPT, PROMPT)
    triangle = sum(_without_head(accounting.account(spec, n, convention=EXACT)) for n in range(1, PROMPT + 1))
    assert flops == pytest.approx(triangle, rel=TIGHT)
    prefill = accounting.account(spec, PROMPT, phase="prefill", convention=EXACT)
    # MLA: the runtime prefills absorbed (one code path with decode), which is what `triangle` counts; the
    # accounting's prefill phase costs MLA in the expanded form engines run (tests/test_accounting.py checks
    # that form against its own equations), so only the other families' prefill phase can be compared here
    if spec.layers[0].attention.kind != "mla":
        assert PROMPT * _without_head(prefill) == pytest.approx(triangle, rel=TIGHT)
    assert _head_flops(model, hidden[-1:]) == pytest.approx(prefill.lm_head_flops, rel=TIGHT)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_parameter_count_matches_accounting(family):
    spec, model = _model(family)
    held = sum(p.numel() for p in model.parameters())  # a tied LM head is one parameter, counted once
    assert held == accounting.params(spec).total


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_weight_bytes_read_by_a_decode_step_match_accounting(family, dtype, name):
    # the matrices one token's decode step multiplies by: every linear, the MLA absorptions, the experts the
    # router picked, the LM head. Vectors (norm weights, biases) are not in weight_bytes, and the embedding
    # table is read one row at a time. Elements are counted at the deployment's weight size: the runtime
    # keeps MoE routers in float32 for the routing decision, which the accounting (like engines serving bf16
    # checkpoints) counts at the weight format; a router is under 0.1% of a real MoE's active weights.
    spec, model = _model(family)
    model = model.to(dtype)
    ops, read = model.ops, []
    size = torch.finfo(dtype).bits // 8

    def matrix(w):  # every multiplication by a matrix reads it (a matrix read twice would count twice)
        if w.ndim >= 2:
            read.append(w.numel() * size)

    def linear(x, weight, bias=None, _f=ops.linear):
        matrix(weight)
        return _f(x, weight, bias)

    def batched_linear(x, weight, _f=ops.batched_linear):
        matrix(weight)
        return _f(x, weight)

    def moe_experts(x, gate_up, down, weights, ids, _f=ops.moe_experts):
        for e in ids.unique().tolist():
            matrix(gate_up[e])
            matrix(down[e])
        return _f(x, gate_up, down, weights, ids)

    ops.linear, ops.batched_linear, ops.moe_experts = linear, batched_linear, moe_experts
    try:
        blocks = -(-CONTEXT // BLOCK)
        cache = KVCache(model.ops, model.cache_layouts(), blocks, BLOCK, dtype)
        meta = AttentionMetadata(torch.tensor([0, 1]), torch.tensor([CONTEXT]), torch.arange(blocks)[None],
                                 torch.tensor([CONTEXT - 1]), BLOCK)
        with torch.inference_mode():
            model.logits(model(torch.tensor([5]), torch.tensor([CONTEXT - 1]), meta, cache.layers))
    finally:
        del ops.linear, ops.batched_linear, ops.moe_experts
    expected = accounting.account(spec, CONTEXT, precision=Precision(weight=name)).weight_bytes
    assert sum(read) == expected


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_cache_bytes_per_token_match_accounting(family, dtype, name):
    spec, model = _model(family)
    cache = KVCache(model.ops, model.cache_layouts(), 3, BLOCK, dtype)
    held = sum(k.nbytes + (v.nbytes if v is not None else 0) for k, v in cache.layers) / (3 * BLOCK)
    assert held == accounting.kv_cache_bytes_per_token(spec, name)
    assert held == accounting.account(spec, 1, precision=Precision(kv=name)).kv_cache_bytes_per_token


@pytest.mark.parametrize("family", list(CONFIGS))
def test_op_calls_per_step_match_the_cost_model(family):
    # the planner charges a calibrated fixed cost per op call; count the calls a decode step really makes
    from modelchip.cost.model_cost import model_cost

    spec, model = _model(family)
    ops = model.ops
    calls = {"n": 0}
    originals = {}
    from modelchip.runtime.contract import OPS

    for op in OPS:
        originals[op] = getattr(ops, op)

        def counted(*a, _f=originals[op], **k):
            calls["n"] += 1
            return _f(*a, **k)

        setattr(ops, op, counted)
    try:
        with torch.inference_mode():
            logits = model.logits(_step(model, 1, CONTEXT))
            ops.sample(logits, torch.zeros(1), torch.ones(1), torch.zeros(1, dtype=torch.long))
    finally:
        for op, f in originals.items():
            setattr(ops, op, f)
    assert calls["n"] == model_cost(spec, Precision()).op_calls()


@pytest.mark.parametrize("variant", ["q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "fp8_block"])
def test_packed_weight_bytes_read_by_a_decode_step_match_accounting(variant):
    # a checkpoint whose every projection and LM head is packed (`load_weights` keeps them so): a decode step
    # streams each packed weight once, scales included, which the planner counts at the format's bits per
    # weight (Q8_0 8.5, Q4_0 4.5, Q4_1 5, Q4_K 4.5, Q6_K 6.5625, FP8 with 128x128 block scales 8.002)
    from modelchip.conformance.quant_cases import quantized_weight
    from modelchip.runtime.loaders.weights import load_weights
    from modelchip.runtime.quant import QuantizedWeight

    # every dimension a multiple of a K-quant's 256 weights and of FP8's 128-row blocks
    config = {**CONFIGS["llama"], "hidden_size": 256, "intermediate_size": 256, "vocab_size": 128}
    spec = families.read(config, "llama")
    model = DecoderLM(get_backend("reference"), spec, torch.float32)
    g = torch.Generator().manual_seed(0)
    tensors = []
    for i, (name, slot) in enumerate(model.slots().items()):
        shape = tuple(slot.target().shape)
        if name.endswith("_proj.weight") or name == "lm_head.weight":
            tensors.append((name, quantized_weight(variant, *shape, seed=i)))
        else:
            tensors.append((name, torch.randn(shape, generator=g) * 0.1))
    assert load_weights(model, tensors) == []
    ops, read = model.ops, []

    def linear(x, weight, bias=None, _f=ops.linear):
        assert isinstance(weight, QuantizedWeight), "a linear weight was not kept packed"
        read.append(weight.nbytes)
        return _f(x, weight, bias)

    ops.linear = linear
    try:
        with torch.inference_mode():
            model.logits(_step(model, 1, CONTEXT))
    finally:
        del ops.linear
    expected = accounting.account(spec, CONTEXT, precision=Precision(weight=variant)).weight_bytes
    assert sum(read) == pytest.approx(expected, rel=1e-12)

