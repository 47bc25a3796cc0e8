"""The openai client against `modelchip serve` (SmolLM2) asking for n completions with logprobs and
top_logprobs, chat and completions, streaming and not; echo with max_tokens=0 scores a prompt as the same
tokens' generation logprobs did; logit_bias through HTTP."""

from __future__ import annotations

import math

import pytest

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow  # every test here talks to a server

SMOLLM2 = "smollm2-135m"
MESSAGES = [{"role": "user", "content": "Name a colour."}]
# the cpu backend computes every query token as a decode over its context, so one token's logprob comes out the
# same whether it is a prompt token or a generated one, up to bf16 rounding of the logits
LOGPROB_TOL = 0.05


def check_top(entries_token_logprob: float, top: list[tuple[str, float]], k: int) -> None:
    assert len(top) == k
    values = [v for _, v in top]
    assert values == sorted(values, reverse=True)
    assert entries_token_logprob <= values[0] + 1e-6
    assert all(v <= 0 for v in values)


def test_chat_n2_logprobs_stream_and_not(openai_client):
    kwargs = dict(model=SMOLLM2, messages=MESSAGES, max_tokens=8, temperature=0, n=2, logprobs=True,
                  top_logprobs=3)
    whole = openai_client.chat.completions.create(**kwargs)
    assert [c.index for c in whole.choices] == [0, 1]
    for c in whole.choices:
        content = c.logprobs.content
        assert content and "".join(t.token for t in content).startswith(c.message.content)
        for t in content:
            check_top(t.logprob, [(x.token, x.logprob) for x in t.top_logprobs], 3)
            assert t.token == t.top_logprobs[0].token  # greedy
            assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    assert whole.choices[0].message.content == whole.choices[1].message.content
    assert whole.usage.completion_tokens == sum(len(c.logprobs.content) for c in whole.choices)

    texts, tokens = {0: "", 1: ""}, {0: [], 1: []}
    for chunk in openai_client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.logprobs is not None:
                tokens[c.index] += [(t.token, round(t.logprob, 3)) for t in c.logprobs.content]
    for i, c in enumerate(whole.choices):
        assert texts[i] == c.message.content
        assert tokens[i] == [(t.token, round(t.logprob, 3)) for t in c.logprobs.content]


def test_chat_n2_sampled_completions_differ(openai_client):
    r = openai_client.chat.completions.create(model=SMOLLM2, messages=MESSAGES, max_tokens=16, temperature=1.0,
                                              n=2, seed=5)
    again = openai_client.chat.completions.create(model=SMOLLM2, messages=MESSAGES, max_tokens=16,
                                                  temperature=1.0, n=2, seed=5)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    assert r.choices[0].message.content != r.choices[1].message.content


def test_completions_n2_logprobs_stream_and_not(openai_client):
    kwargs = dict(model=SMOLLM2, prompt=["The capital of France is", "One, two,"], max_tokens=6, temperature=0,
                  n=2, logprobs=2)
    whole = openai_client.completions.create(**kwargs)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    for c in whole.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert "".join(lp.tokens).startswith(c.text)
        for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
            check_top(value, sorted(top.items(), key=lambda x: -x[1]), 2)
            assert max(top, key=top.get) == tok  # greedy
    assert whole.choices[0].text == whole.choices[1].text and "Paris" in whole.choices[0].text
    streamed: dict[int, list] = {i: [] for i in range(4)}
    for chunk in openai_client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            if c.logprobs is not None:
                streamed[c.index] += [round(v, 3) for v in c.logprobs.token_logprobs]
    for c in whole.choices:
        assert streamed[c.index] == [round(v, 3) for v in c.logprobs.token_logprobs]


def test_echo_scores_the_prompt_as_generation_did(openai_client):
    """lm-eval's request: echo, max_tokens=0, logprobs=1, prompt as token ids. The generated tokens' logprobs
    of a greedy completion come back as the prompt logprobs of the same token sequence."""
    prompt = "The three primary colours are"
    gen = openai_client.completions.create(model=SMOLLM2, prompt=prompt, max_tokens=5, temperature=0, logprobs=1)
    echo = openai_client.completions.create(model=SMOLLM2, prompt=prompt + gen.choices[0].text, max_tokens=0,
                                            echo=True, logprobs=1, temperature=0)
    c = echo.choices[0]
    assert c.text == prompt + gen.choices[0].text and c.finish_reason == "length"
    assert echo.usage.completion_tokens == 0
    lp = c.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens) == c.text and lp.text_offset[-1] == len(c.text) - len(lp.tokens[-1])
    tail = lp.token_logprobs[-5:]
    assert lp.tokens[-5:] == gen.choices[0].logprobs.tokens
    for a, b in zip(tail, gen.choices[0].logprobs.token_logprobs, strict=True):
        assert abs(a - b) < LOGPROB_TOL, (tail, gen.choices[0].logprobs.token_logprobs)
    assert all(v is not None and v <= 0 and math.isfinite(v) for v in lp.token_logprobs[1:])


def test_logit_bias_forces_a_token_over_http(openai_client):
    forced = openai_client.completions.create(model=SMOLLM2, prompt="Hello", max_tokens=4, temperature=0,
                                              logit_bias={"28": 100}, logprobs=0)
    assert forced.choices[0].logprobs.tokens == [forced.choices[0].logprobs.tokens[0]] * 4
    again = openai_client.completions.create(model=SMOLLM2, prompt="Hello", max_tokens=4, temperature=0,
                                             extra_body={"stop_token_ids": [28]}, logit_bias={"28": 100})
    assert again.choices[0].finish_reason == "stop" and again.usage.completion_tokens == 1
