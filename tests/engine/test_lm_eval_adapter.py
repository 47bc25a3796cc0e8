"""modelchip's lm-eval model (conformance/lm_eval_adapter.py) on the tiny checkpoint: its log-likelihoods are
float64 sums over the model's own logits, its greedy flag is the argmax test, its generations stop where lm-eval
asks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from modelchip.conformance.lm_eval_adapter import ModelchipLM  # noqa: E402
from modelchip.engine import SamplingParams  # noqa: E402


def test_loglikelihood_is_the_sum_over_the_continuation(tiny_llm):
    lm = ModelchipLM(tiny_llm, batch_size=2)
    pairs = [("The engine schedules", " requests in steps."), ("Blocks hold", " the keys"), ("Unicode", " café")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for (context, continuation), (score, greedy) in zip(pairs, got, strict=True):
        ctx, cont = lm._encode_pair(context, continuation)
        lp = torch.log_softmax(tiny_llm.logits(ctx + cont).double(), dim=-1)
        rows = lp[len(ctx) - 1:len(ctx) + len(cont) - 1]
        expected = sum(rows[i, t].item() for i, t in enumerate(cont))
        assert abs(score - expected) < 1e-4
        assert greedy == all(rows[i].argmax().item() == t for i, t in enumerate(cont))
    assert lm.scores == [s for s, _ in got]


def test_a_continuation_the_model_would_generate_is_greedy(tiny_llm):
    lm = ModelchipLM(tiny_llm)
    context = "The engine schedules"
    ids = tiny_llm.tokenizer.encode(context, add_special_tokens=False)
    out = tiny_llm.generate([ids], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))[0]
    [(score, greedy)] = lm._loglikelihood_tokens([((context, ""), ids, out.token_ids)])
    assert greedy and score < 0


def test_generate_until_stops_at_the_requested_strings(tiny_llm):
    lm = ModelchipLM(tiny_llm)
    plain = lm.generate_until([Instance("generate_until", {}, ("Stop strings end", {"max_gen_toks": 12}), 0)])[0]
    assert plain == tiny_llm.generate(["Stop strings end"], max_tokens=12)[0].text
    stop = plain[3:5]
    cut = lm.generate_until([Instance("generate_until", {}, ("Stop strings end", {"until": [stop],
                                                                                   "max_gen_toks": 12}), 0)])[0]
    assert cut == plain[:plain.index(stop)]
