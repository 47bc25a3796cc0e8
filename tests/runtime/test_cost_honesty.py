"""The cost model's per-token FLOPs and KV bytes equal what the runtime really does (within 1%).

A decode step at context L is run through the paged KV cache under torch's FLOP counter, and compared to
modelchip.cost.accounting with the exact convention (router and LM head counted, MLA values 512-wide).
"""

import pytest

torch = pytest.importorskip("torch")
from tiny_configs import CONFIGS  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from modelchip.cost import accounting  # noqa: E402
from modelchip.cost.conventions import EXACT, Precision  # noqa: E402
from modelchip.runtime.backends import get_backend  # noqa: E402
from modelchip.runtime.contract import AttentionMetadata  # noqa: E402
from modelchip.runtime.kv_cache import KVCache  # noqa: E402
from modelchip.runtime.models.decoder import DecoderLM  # noqa: E402
from modelchip.spec import families  # noqa: E402

CONTEXT = 37
BLOCK = 8


def _model(family: str):
    spec = families.read(CONFIGS[family], family)
    torch.manual_seed(0)
    model = DecoderLM(get_backend("reference"), spec, torch.float32)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return spec, model


@pytest.mark.parametrize("family", list(CONFIGS))
def test_decode_flops_match_accounting(family):
    spec, model = _model(family)
    blocks = -(-CONTEXT // BLOCK)
    cache = KVCache(model.cache_layouts(), blocks, BLOCK, torch.float32, torch.device("cpu"))
    meta = AttentionMetadata(torch.tensor([0, 1]), torch.tensor([CONTEXT]), torch.arange(blocks)[None],
                             torch.tensor([CONTEXT - 1]), BLOCK)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        hidden = model(torch.tensor([5]), torch.tensor([CONTEXT - 1]), meta, cache.layers)
        model.logits(hidden)
    expected = accounting.account(spec, CONTEXT, convention=EXACT).total_flops
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_cache_bytes_per_token_match_accounting(family, dtype, name):
    spec, model = _model(family)
    cache = KVCache(model.cache_layouts(), 3, BLOCK, dtype, torch.device("cpu"))
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
        blocks = -(-CONTEXT // BLOCK)
        cache = KVCache(model.cache_layouts(), blocks, BLOCK, torch.float32, torch.device("cpu"))
        meta = AttentionMetadata(torch.tensor([0, 1]), torch.tensor([CONTEXT]), torch.arange(blocks)[None],
                                 torch.tensor([CONTEXT - 1]), BLOCK)
        with torch.inference_mode():
            logits = model.logits(model(torch.tensor([5]), torch.tensor([CONTEXT - 1]), meta, cache.layers))
            ops.sample(logits, torch.zeros(1), torch.ones(1), torch.zeros(1, dtype=torch.long))
    finally:
        for op, f in originals.items():
            setattr(ops, op, f)
    assert calls["n"] == model_cost(spec, Precision()).op_calls()
