"""Sampling and output options in the engine, against float64 math on the model's own logits: logprobs and
top logprobs, prompt logprobs (chunked or not, with max_tokens=0), n completions, penalties in OpenAI's and
HF's formulas, logit_bias, min_tokens, stop_token_ids, per-request logits processors, and refused values."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from modelchip.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from modelchip.engine.logits_processors import apply_penalties  # noqa: E402
from modelchip.engine.sequence import Sequence  # noqa: E402
from modelchip.errors import ModelchipError  # noqa: E402

PROMPT = [17, 250, 33, 98, 140, 7, 61, 302, 45, 12, 199, 76, 5, 88, 230, 19, 64, 111, 9]
TOL = 1e-4  # float32 model logits, log-softmax checked in float64


def ref_logprobs(llm, ids: list[int]) -> torch.Tensor:
    """float64 log-softmax of the model's logits at every position of `ids`."""
    return torch.log_softmax(llm.logits(ids).double(), dim=-1)


def run(engine: LLMEngine) -> dict:
    outs: dict = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outs.setdefault((out.request_id, out.index), []).append(out)
    return outs


def test_logprobs_and_top_logprobs_match_the_model(tiny_llm):
    gen = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=3))[0]
    out = gen.outputs[0]
    assert len(out.logprobs) == len(out.token_ids) == 6
    ref = ref_logprobs(tiny_llm, PROMPT + out.token_ids[:-1])
    for step, (tok, entry) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        row = ref[len(PROMPT) - 1 + step]
        assert entry[tok].rank == 1  # greedy
        assert abs(entry[tok].logprob - row[tok].item()) < TOL
        top = row.topk(3)
        assert [t for t in entry if entry[t].rank <= 3] == top.indices.tolist()
        for value, t in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            assert abs(entry[t].logprob - value) < TOL
            assert entry[t].decoded_token == tiny_llm.tokenizer.decode([t], skip_special_tokens=False)
    total = sum(e[t].logprob for e, t in zip(out.logprobs, out.token_ids, strict=True))
    assert abs(out.cumulative_logprob - total) < 1e-9


@pytest.mark.parametrize("chunk", [4096, 5])
def test_prompt_logprobs_score_the_prompt(tiny_llm, chunk):
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=256, max_num_batched_tokens=chunk))
    engine.add_request("p", PROMPT, SamplingParams(max_tokens=0, prompt_logprobs=2))
    (last,) = run(engine)[("p", 0)]
    assert last.finished and last.finish_reason == "length" and last.token_ids == []
    lps = last.prompt_logprobs
    assert len(lps) == len(PROMPT) and lps[0] is None
    ref = ref_logprobs(tiny_llm, PROMPT)
    for pos in range(1, len(PROMPT)):
        tok = PROMPT[pos]
        entry = lps[pos]
        assert abs(entry[tok].logprob - ref[pos - 1, tok].item()) < TOL
        assert entry[tok].rank == int((ref[pos - 1] > ref[pos - 1, tok]).sum()) + 1
        assert [t for t in entry if entry[t].rank <= 2] == ref[pos - 1].topk(2).indices.tolist()
    assert engine.block_manager.num_used_blocks == 0


def test_n_completions_share_one_request(tiny_llm):
    greedy = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))[0]
    many = tiny_llm.generate([PROMPT], SamplingParams(n=3, max_tokens=5, temperature=0, ignore_eos=True))[0]
    assert [o.index for o in many.outputs] == [0, 1, 2]
    assert all(o.token_ids == greedy.token_ids for o in many.outputs)
    sampled = SamplingParams(n=4, max_tokens=8, temperature=1.5, seed=7, ignore_eos=True)
    a = tiny_llm.generate([PROMPT], sampled)[0]
    b = tiny_llm.generate([PROMPT], SamplingParams(n=4, max_tokens=8, temperature=1.5, seed=7, ignore_eos=True))[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]  # seed + index per completion
    assert len({tuple(o.token_ids) for o in a.outputs}) > 1


def test_n_completions_in_the_engine_finish_the_request_once(tiny_llm):
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=512))
    engine.add_request("r", PROMPT, SamplingParams(n=3, max_tokens=4, temperature=0, ignore_eos=True,
                                                   prompt_logprobs=1))
    # completions 1 and 2 wait until completion 0 has computed the prompt
    assert engine.num_waiting == 1 and len(engine.deferred["r"]) == 2
    outs = run(engine)
    for i in range(3):
        steps = outs[("r", i)]
        assert steps[0].prompt_logprobs is not None and len(steps[0].prompt_logprobs) == len(PROMPT)
        assert sum(o.finished for o in steps) == 1
    ends = [o for steps in outs.values() for o in steps if o.request_finished]
    assert len(ends) == 1 and engine.block_manager.num_used_blocks == 0 and not engine.groups


def test_abort_drops_every_completion(tiny_llm):
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=512))
    engine.add_request("r", PROMPT, SamplingParams(n=3, max_tokens=50, ignore_eos=True))
    engine.step()
    out = engine.abort_request("r")
    assert out.request_finished and out.finish_reason == "abort"
    assert not engine.has_unfinished_requests() and engine.block_manager.num_used_blocks == 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logit_bias_plus_100_forces_a_token(tiny_llm, temperature):
    gen = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=temperature, ignore_eos=True,
                                                     logit_bias={123: 100.0}, seed=1))[0]
    assert gen.token_ids == [123] * 6
    banned = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    first = banned.token_ids[0]
    other = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=1, temperature=0, logit_bias={first: -100}))[0]
    assert other.token_ids[0] != first


def test_penalties_follow_the_openai_and_hf_formulas():
    g = torch.Generator().manual_seed(0)
    vocab = 50
    logits = torch.randn(3, vocab, generator=g) * 3
    prompts = [[1, 2, 3], [4, 4], [5]]
    outputs = [[7, 7, 7, 2, 9], [], [5, 5, 11]]
    params = [SamplingParams(frequency_penalty=0.7, presence_penalty=-0.4),
              SamplingParams(repetition_penalty=1.3, frequency_penalty=2.0),
              SamplingParams(repetition_penalty=0.8, presence_penalty=1.5)]
    seqs = []
    for prompt, output, p in zip(prompts, outputs, params, strict=True):
        seq = Sequence("x", prompt, p)
        seq.token_ids += output
        seqs.append(seq)
    got = apply_penalties(logits.clone(), seqs).double()
    for r, (prompt, output, p) in enumerate(zip(prompts, outputs, params, strict=True)):
        for t in range(vocab):
            x = float(logits[r, t])
            if t in prompt or t in output:  # repetition penalty: HF's rule
                x = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
            c = output.count(t)  # OpenAI: mu - c * alpha_frequency - 1[c > 0] * alpha_presence
            x = x - c * p.frequency_penalty - (1.0 if c > 0 else 0.0) * p.presence_penalty
            assert math.isclose(got[r, t].item(), x, rel_tol=1e-6, abs_tol=1e-5), (r, t)


def test_a_repetition_penalty_beyond_float32_gives_the_limit_not_nan():
    # 1e-122 is 0 in float32 and 1e300 infinite; both are valid positive penalties (the fuzzer sent the first)
    logits = torch.tensor([[2.0, -1.0, 0.5, float("-inf")], [2.0, -1.0, 0.5, float("-inf")]])
    seqs = []
    for penalty in (1e-122, 1e300):
        seq = Sequence("x", [0, 1, 3], SamplingParams(repetition_penalty=penalty))
        seqs.append(seq)
    got = apply_penalties(logits.clone(), seqs)
    big = torch.finfo(torch.float32).max
    # tiny penalty: the seen positive logit goes to the top of the range, the seen negative one to -0
    assert 1e38 <= got[0, 0] <= big and got[0, 1] <= 0 and got[0, 1] > -1e-30 and got[0, 2] == 0.5
    # huge penalty: the seen positive logit to +0, the seen negative one to the bottom of the range
    assert 0 <= got[1, 0] < 1e-30 and got[1, 1] == -big and got[1, 2] == 0.5
    assert torch.isneginf(got[:, 3]).all()  # a masked token stays masked
    probs = torch.softmax(got, dim=-1)
    assert torch.isfinite(probs).all() and probs[0, 0] == 1.0 and probs[1, 3] == 0.0


def test_frequency_penalty_changes_greedy_output(tiny_llm):
    plain = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    assert len(set(plain.token_ids)) < len(plain.token_ids), "the tiny model should repeat itself"
    penalised = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                           presence_penalty=2.0, frequency_penalty=2.0))[0]
    assert len(set(penalised.token_ids)) > len(set(plain.token_ids))


def test_min_tokens_and_stop_token_ids(tiny_llm):
    eos = min(tiny_llm.eos_ids)
    early = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=20, temperature=0, logit_bias={eos: 100}))[0]
    assert early.token_ids == [eos] and early.finish_reason == "stop"
    held = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=20, temperature=0, logit_bias={eos: 100},
                                                      min_tokens=5))[0]
    assert len(held.token_ids) == 6 and eos not in held.token_ids[:5] and held.token_ids[5] == eos
    plain = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    stop_at = plain.token_ids[3]
    cut = plain.token_ids.index(stop_at) + 1
    stopped = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True,
                                                         stop_token_ids=[stop_at]))[0]
    assert stopped.token_ids == plain.token_ids[:cut] and stopped.finish_reason == "stop"


def test_per_request_logits_processors_touch_only_their_request(tiny_llm):
    seen = []

    def only_42(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        seen.append(list(output_ids))
        masked = torch.full_like(logits, float("-inf"))
        masked[42] = 0.0
        return masked

    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=512))
    engine.add_request("free", PROMPT, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    engine.add_request("masked", PROMPT, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                        logits_processors=[only_42]))
    outs = run(engine)
    alone = tiny_llm.generate([PROMPT], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert outs[("masked", 0)][-1].token_ids == [42] * 4
    assert outs[("free", 0)][-1].token_ids == alone.token_ids
    assert seen == [[], [42], [42, 42], [42, 42, 42]]


@pytest.mark.parametrize("kwargs, field", [
    ({"n": 0}, "n"), ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"logprobs": 21}, "logprobs"),
    ({"prompt_logprobs": -1}, "prompt_logprobs"), ({"logit_bias": {"a": 1}}, "logit_bias"),
    ({"logit_bias": {5: 101}}, "logit_bias"), ({"min_tokens": 20, "max_tokens": 4}, "min_tokens"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"), ({"max_tokens": 0}, "max_tokens")])
def test_bad_values_are_refused_by_name(kwargs, field):
    with pytest.raises(ModelchipError, match=field):
        SamplingParams(**kwargs)


def test_token_ids_outside_the_vocabulary_are_refused(tiny_llm):
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=256))
    with pytest.raises(ModelchipError, match="logit_bias"):
        engine.add_request("a", PROMPT, SamplingParams(logit_bias={10**6: 1.0}))
    with pytest.raises(ModelchipError, match="stop_token_ids"):
        engine.add_request("b", PROMPT, SamplingParams(stop_token_ids=[10**6]))
