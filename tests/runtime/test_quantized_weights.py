"""Quantized checkpoints load with their linear weights packed as stored, and compute what the same
checkpoint dequantized at load computes.

Tests write their own tiny quantized checkpoints: GGUF files with the gguf package's writer and quantizer
(random blocks for Q4_K/Q6_K, which it cannot quantize), block-scaled FP8 and compressed-tensors INT8 by
quantizing a tiny transformers Llama with torch and saving with safetensors. Each is checked three ways: the
packed model's logits against the same file loaded with `quantization="none"` (GGUF: dequantized by the
gguf package; FP8/INT8: by torch), against a float checkpoint holding an independent numpy dequantization,
and the runtime's own dequantizers against the gguf package's and numpy's, element by element.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
safetensors_torch = pytest.importorskip("safetensors.torch")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from test_gguf_loader import write_model  # noqa: E402

from modelchip import LLM  # noqa: E402
from modelchip.conformance.oracle import dequantized_weight, e4m3_values  # noqa: E402
from modelchip.conformance.quant_cases import quantized_weight  # noqa: E402
from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime import backends  # noqa: E402
from modelchip.runtime.backends.cpu import PackedLinear  # noqa: E402
from modelchip.runtime.backends.cpu_quant import KERNEL_FORMATS, QuantLinear  # noqa: E402
from modelchip.runtime.backends.reference import ReferenceBackend  # noqa: E402
from modelchip.runtime.dequant import dequantize  # noqa: E402
from modelchip.runtime.quant import QuantizedWeight, select_rows, stack_rows  # noqa: E402

GGUF_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K]
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "q_a_proj", "q_b_proj",
          "kv_a_proj_with_mqa", "kv_b_proj")  # every projection DeepSeek-V3's FP8 checkpoint quantizes


def ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def load(path, **kwargs):
    return LLM(str(path), backend=kwargs.pop("backend", "reference"), dtype=kwargs.pop("dtype", "float32"),
               **kwargs)


# ---------------------------------------------------------------- the runtime's dequantizers

@pytest.mark.parametrize("variant", ["q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "fp8_block", "int8_channel"])
def test_dequantize_matches_independent_decoders(variant):
    w = quantized_weight(variant, 48, 512, seed=3)
    # GGUF: the gguf package's numpy dequantizer, bit for bit; FP8/INT8: numpy bit decoding times the scales,
    # in float64 where the runtime rounds the product once to float32
    rtol = 0 if variant.startswith("q") else 2.0 ** -24
    np.testing.assert_allclose(dequantize(w).double().numpy(), dequantized_weight(w).numpy(), rtol=rtol, atol=0)


def test_e4m3_decoder_agrees_with_torch():
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ours = e4m3_values(bits.numpy())
    theirs = bits.view(torch.float8_e4m3fn).double().numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(ours[~np.isnan(ours)], theirs[~np.isnan(theirs)])


def test_row_gather_and_stack_move_whole_packed_rows():
    for variant in ("q4_k", "fp8_block", "int8_channel"):
        a, b = quantized_weight(variant, 200, 256, seed=1), quantized_weight(variant, 56, 256, seed=2)
        rows = torch.randperm(200, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(dequantize(select_rows(a, rows)), dequantize(a)[rows], rtol=0, atol=0)
        torch.testing.assert_close(dequantize(stack_rows([a, b])), torch.cat([dequantize(a), dequantize(b)]),
                                   rtol=0, atol=0)
    with pytest.raises(ModelchipError, match="cannot stack a q8_0 weight"):
        stack_rows([quantized_weight("q4_0", 32, 256, 1), quantized_weight("q8_0", 32, 256, 1)])


def test_malformed_quantized_weight_is_refused():
    with pytest.raises(ModelchipError, match=r"data must be uint8 \[4, 68\]"):
        QuantizedWeight("q8_0", torch.zeros(4, 60, dtype=torch.uint8), 4, 64)
    with pytest.raises(ModelchipError, match="multiple of the 256-weight block"):
        QuantizedWeight("q4_k", torch.zeros(4, 144, dtype=torch.uint8), 4, 128)
    with pytest.raises(ModelchipError, match="unknown format"):
        QuantizedWeight("q5_0", torch.zeros(4, 22, dtype=torch.uint8), 4, 32)


# ---------------------------------------------------------------- GGUF

@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda q: q.name)
def test_gguf_linear_weights_stay_packed_and_compute_the_dequantized_model(tmp_path, qtype):
    path = tmp_path / f"{qtype.name}.gguf"
    write_model(path, qtype, layers=2)
    packed, plain = load(path), load(path, quantization="none")
    fmt = qtype.name.lower()
    assert packed.quantization == "gguf" and plain.quantization is None
    attn, mlp = packed.model.layers[0].self_attn, packed.model.layers[1].mlp
    for w in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj, packed.model.lm_head):
        assert isinstance(w, QuantizedWeight) and w.format == fmt
    # q/k rows un-permuted on the packed rows, and q|k|v stacked: the same matrix the float load builds
    torch.testing.assert_close(dequantize(attn.qkv_proj), plain.model.layers[0].self_attn.qkv_proj.data,
                               rtol=0, atol=0)
    # the embedding table is read a row at a time: dequantized, and said so
    assert isinstance(packed.model.embed_tokens, torch.nn.Parameter)
    assert dict(packed.dequantized) == {f"{fmt} weight not read by linear (embed_tokens)": 1}
    tokens = ids(24, packed.vocab_size)
    ref = plain.logits(tokens)  # the gguf package's dequantization at load
    torch.testing.assert_close(packed.logits(tokens), ref, rtol=1e-5, atol=1e-5)
    assert packed.ops.backend.fallbacks[f"linear: {fmt} weight dequantized per call"] > 0
    cpu = load(path, backend="cpu")
    if fmt in KERNEL_FORMATS and cpu.ops.backend.kernels is not None:
        # packed for the int8 matmul, which rounds activations to int8 per 32-block as llama.cpp does (checked
        # exactly against float64 in tests/runtime/test_cpu_linear_quant.py): the same model within that rounding
        assert isinstance(cpu.model.layers[0].self_attn.qkv_proj, QuantLinear)
        got = cpu.logits(tokens).double()
        assert torch.nn.functional.cosine_similarity(got, ref.double(), dim=-1).min() > 0.95
    else:
        assert isinstance(cpu.model.layers[0].self_attn.qkv_proj, PackedLinear)
        # the cpu backend's fused kernels round in other places than the reference (tests/runtime/test_cpu_backend)
        assert (cpu.logits(tokens) - ref).abs().max() <= 1e-5 * ref.abs().max()
        assert cpu.ops.backend.fallbacks[f"linear: {fmt} weight dequantized at prepare to float32 (no {fmt} kernel)"] \
            == 2 * 4 + 1  # every linear weight of both layers, and the LM head
    # packed bytes: what the file holds for those matrices, scales included
    assert packed.parameter_bytes["layers.0.self_attn.qkv_proj"] == attn.qkv_proj.data.numel()
    assert packed.parameter_bytes["lm_head"] == packed.model.lm_head.data.numel()
    assert sum(packed.parameter_bytes.values()) < sum(plain.parameter_bytes.values()) / 3


def test_gguf_bfloat16_model_packs_the_same_weights(tmp_path):
    path = tmp_path / "q4_k.gguf"  # a format without an int8 kernel: dequantized at prepare
    write_model(path, Q.Q4_K, layers=2)
    packed, plain = load(path, backend="cpu", dtype="bfloat16"), load(path, backend="cpu", dtype="bfloat16",
                                                                       quantization="none")
    tokens = ids(16, packed.vocab_size)
    assert torch.equal(packed.logits(tokens), plain.logits(tokens))  # same dequantized bf16 weights


def test_gguf_tied_head_stays_packed_beside_a_float_embedding(tmp_path):
    path = tmp_path / "tied.gguf"
    write_model(path, Q.Q4_0, tied=True, types={"token_embd": Q.Q8_0})
    packed, plain = load(path), load(path, quantization="none")
    assert isinstance(packed.model.lm_head, QuantizedWeight) and packed.model.lm_head.format == "q8_0"
    torch.testing.assert_close(dequantize(packed.model.lm_head), packed.model.embed_tokens.data, rtol=0, atol=0)
    assert dict(packed.dequantized) == {"q8_0 embedding table (read by row; its tied LM head stays packed)": 1}
    tokens = ids(16, packed.vocab_size)
    torch.testing.assert_close(packed.logits(tokens), plain.logits(tokens), rtol=1e-5, atol=1e-5)


def test_gguf_mixed_formats_in_a_stacked_weight_are_dequantized_and_counted(tmp_path):
    # llama.cpp's Q4_K_M gives attn_v (and ffn_down) Q6_K beside Q4_K q/k
    path = tmp_path / "mixed.gguf"
    write_model(path, Q.Q4_K, layers=2, types={"attn_v": Q.Q6_K})
    packed, plain = load(path), load(path, quantization="none")
    attn = packed.model.layers[0].self_attn
    assert isinstance(attn.qkv_proj, torch.nn.Parameter)  # q|k|v could not be one packed weight
    assert isinstance(attn.o_proj, QuantizedWeight) and attn.o_proj.format == "q4_k"
    assert packed.dequantized["q4_k part of a stacked weight whose formats differ (q4_k/q6_k)"] == 2 * 2
    assert packed.dequantized["q6_k part of a stacked weight whose formats differ (q4_k/q6_k)"] == 2
    tokens = ids(16, packed.vocab_size)
    torch.testing.assert_close(packed.logits(tokens), plain.logits(tokens), rtol=1e-5, atol=1e-5)


class _FloatOnlyBackend(ReferenceBackend):
    """A backend that prepares weights but names no quantized format (as every backend before them)."""

    name = "float-only"
    quantized_formats = frozenset()

    def prepare_linear(self, weight):
        assert isinstance(weight, torch.Tensor), "a backend without quantized formats got a QuantizedWeight"
        return weight.clone()


def test_backend_without_quantized_linear_gets_float_weights_counted(tmp_path, monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, _FloatOnlyBackend.name, _FloatOnlyBackend)
    path = tmp_path / "q8.gguf"
    write_model(path, Q.Q8_0, layers=2)
    llm = load(path, backend=_FloatOnlyBackend.name)
    reason = "linear: q8_0 weights dequantized at load (backend 'float-only' has no q8_0 linear)"
    assert llm.ops.fallback_report()["fallback_calls"] == {reason: 2 * 4 + 1}
    tokens = ids(16, llm.vocab_size)
    torch.testing.assert_close(llm.logits(tokens), load(path, quantization="none").logits(tokens),
                               rtol=1e-5, atol=1e-5)


def test_quantization_argument_is_checked(tmp_path):
    path = tmp_path / "q8.gguf"
    write_model(path, Q.Q8_0)
    assert load(path, quantization="gguf").quantization == "gguf"
    with pytest.raises(ModelchipError, match="quantization='fp8', but .* is quantized with 'gguf'"):
        load(path, quantization="fp8")
    with pytest.raises(ModelchipError, match="quantization 'awq' is not one of"):
        load(path, quantization="awq")
    f32 = tmp_path / "f32.gguf"
    write_model(f32, Q.F32)
    with pytest.raises(ModelchipError, match="is not quantized"):
        load(f32, quantization="gguf")


# ---------------------------------------------------------------- HF checkpoints: block FP8, compressed-tensors INT8

def _fp8_block(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's weight quantization: per block, scale = max|w| / 448 and fp8 = w / scale."""
    bo, bi = block
    out, inp = w.shape
    scales = torch.empty(-(-out // bo), -(-inp // bi))
    q = torch.empty(out, inp, dtype=torch.float8_e4m3fn)
    for r in range(scales.shape[0]):
        for c in range(scales.shape[1]):
            part = w[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi]
            scales[r, c] = part.abs().max() / 448
            q[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi] = (part / scales[r, c]).to(torch.float8_e4m3fn)
    return q, scales


def _int8_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """llm-compressor's symmetric per-channel INT8: scale = max|row| / 127, q = round(w / scale)."""
    scales = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / scales).clamp(-128, 127).to(torch.int8), scales


def _quantized_copy(ckpt, dst: Path, method: str, **how) -> tuple[Path, Path]:
    """(the checkpoint with every projection quantized, a float copy holding numpy's dequantization of it)."""
    tensors = safetensors_torch.load_file(str(ckpt.path / "model.safetensors"))
    quantized, dequantized = {}, {}
    for name, t in tensors.items():
        if name.rsplit(".", 2)[-2] not in LINEAR:
            quantized[name] = dequantized[name] = t
            continue
        prefix = name.removesuffix(".weight")
        if method == "fp8":
            q, s = _fp8_block(t.float(), tuple(how["block"]))
            quantized |= {name: q, f"{prefix}.weight_scale_inv": s}
            rows, cols = np.arange(t.shape[0]) // how["block"][0], np.arange(t.shape[1]) // how["block"][1]
            dense = e4m3_values(q.view(torch.uint8).numpy()) * s.double().numpy()[rows][:, cols]
        else:
            q, s = _int8_channel(t.float())
            quantized |= {name: q, f"{prefix}.weight_scale": s}
            dense = q.numpy().astype(np.float64) * s.double().numpy()
        dequantized[name] = torch.from_numpy(dense).float()
    if method == "fp8":
        qconfig = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                   "weight_block_size": list(how["block"])}
    else:
        acts = {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True, "symmetric": True}
        qconfig = {"quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status":
                   "compressed", "ignore": ["lm_head"], "config_groups": {"group_0": {
                       "targets": ["Linear"], "input_activations": acts if how.get("w8a8") else None,
                       "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True,
                                   "dynamic": False}}}}
    paths = []
    for suffix, held, config in (("q", quantized, qconfig), ("dq", dequantized, None)):
        path = dst / f"{ckpt.name}-{method}-{suffix}"
        shutil.copytree(ckpt.path, path)
        safetensors_torch.save_file(held, str(path / "model.safetensors"), metadata={"format": "pt"})
        if config:
            data = json.loads((path / "config.json").read_text())
            data["quantization_config"] = config
            (path / "config.json").write_text(json.dumps(data))
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("block", [(32, 32), (24, 32)], ids=["aligned blocks", "blocks across q|k|v"])
def test_fp8_block_checkpoint_stays_packed(hf_checkpoint, tmp_path, block):
    qpath, dqpath = _quantized_copy(hf_checkpoint("llama"), tmp_path, "fp8", block=block)
    packed = load(qpath)
    assert packed.quantization == "fp8" and not packed.dequantized
    qkv = packed.model.layers[0].self_attn.qkv_proj
    assert qkv.format == "fp8_block" and qkv.data.dtype == torch.float8_e4m3fn
    # 64 + 32 + 32 rows: aligned to 32-row blocks the scales stack as they are; 24-row blocks end inside q,
    # so each row gets its own scale row
    assert qkv.block_shape == (block if block[0] == 32 else (1, 32))
    assert isinstance(packed.model.lm_head, torch.nn.Parameter)  # left in float by the checkpoint
    tokens = ids(32, packed.vocab_size)
    got = packed.logits(tokens)
    torch.testing.assert_close(got, load(qpath, quantization="none").logits(tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, load(dqpath).logits(tokens), rtol=1e-5, atol=1e-5)  # numpy's decoding
    torch.testing.assert_close(load(qpath, backend="cpu").logits(tokens), got, rtol=1e-4, atol=1e-4)


def test_fp8_deepseek_v3_packs_linears_and_dequantizes_experts_and_absorbed_weights(hf_checkpoint, tmp_path):
    qpath, dqpath = _quantized_copy(hf_checkpoint("deepseek_v3"), tmp_path, "fp8", block=(32, 32))
    packed = load(qpath)
    reasons = dict(packed.dequantized)
    # routed experts are stacks moe_experts reads as floats; MLA's kv_b_proj is absorbed (batched_linear)
    assert reasons.keys() == {"fp8_block weight not read by linear (experts_gate_up)",
                              "fp8_block weight not read by linear (experts_down)",
                              "fp8_block weight not read by linear (kv_b_proj)"}, reasons
    assert isinstance(packed.model.layers[0].self_attn.o_proj, QuantizedWeight)
    tokens = ids(32, packed.vocab_size)
    got = packed.logits(tokens)
    torch.testing.assert_close(got, load(dqpath).logits(tokens), rtol=1e-5, atol=1e-5)


def test_int8_weight_only_checkpoint_stays_packed(hf_checkpoint, tmp_path):
    qpath, dqpath = _quantized_copy(hf_checkpoint("llama"), tmp_path, "compressed-tensors")
    packed = load(qpath)
    assert packed.quantization == "compressed-tensors"
    w = packed.model.layers[1].mlp.down_proj
    assert (w.format, w.activation, w.data.dtype) == ("int8_channel", None, torch.int8)
    tokens = ids(32, packed.vocab_size)
    got = packed.logits(tokens)
    torch.testing.assert_close(got, load(qpath, quantization="none").logits(tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, load(dqpath).logits(tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(load(qpath, backend="cpu").logits(tokens), got, rtol=1e-4, atol=1e-4)


def test_int8_w8a8_checkpoint_quantizes_activations(hf_checkpoint, tmp_path):
    qpath, _ = _quantized_copy(hf_checkpoint("llama"), tmp_path, "compressed-tensors", w8a8=True)
    packed = load(qpath)
    assert packed.model.layers[0].self_attn.qkv_proj.activation == "int8_dynamic_token"
    tokens = ids(32, packed.vocab_size)
    got = packed.logits(tokens)
    # the cpu backend quantizes activations per token too, and multiplies the same integers
    torch.testing.assert_close(load(qpath, backend="cpu").logits(tokens), got, rtol=1e-4, atol=1e-4)
    # dequantized at load the activations stay float: close (8-bit activations), but not the same model
    weight_only = load(qpath, quantization="none").logits(tokens)
    diff = (got - weight_only).abs().max().item()
    assert 1e-4 < diff < 0.05 * weight_only.abs().max().item()


def _with_config(ckpt, tmp_path: Path, qconfig: dict, tensors: dict | None = None) -> Path:
    path = tmp_path / f"{ckpt.name}-edited"
    shutil.copytree(ckpt.path, path)
    data = json.loads((path / "config.json").read_text())
    data["quantization_config"] = qconfig
    (path / "config.json").write_text(json.dumps(data))
    if tensors:
        held = safetensors_torch.load_file(str(path / "model.safetensors")) | tensors
        safetensors_torch.save_file(held, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("qconfig,message", [
    ({"quant_method": "gptq", "bits": 4}, "quant_method 'gptq' is not supported"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "per-tensor FP8"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "static"},
     "activation_scheme 'static'"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {
        "weights": {"num_bits": 4, "type": "int", "strategy": "group"}}}}, "format 'pack-quantized'"),
    ({"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"g": {
        "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
        "input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor", "dynamic": False}}}},
     "input_activations"),
])
def test_unsupported_quantization_is_refused_by_name(hf_checkpoint, tmp_path, qconfig, message):
    path = _with_config(hf_checkpoint("llama"), tmp_path, qconfig)
    with pytest.raises(ModelchipError, match=message):
        load(path)


def test_fp8_weight_without_its_scale_is_named(hf_checkpoint, tmp_path):
    ckpt = hf_checkpoint("llama")
    name = "model.layers.0.mlp.down_proj.weight"
    weight = safetensors_torch.load_file(str(ckpt.path / "model.safetensors"))[name]
    path = _with_config(ckpt, tmp_path, {"quant_method": "fp8", "weight_block_size": [32, 32]},
                        {name: weight.to(torch.float8_e4m3fn)})
    with pytest.raises(ModelchipError, match=r"model.layers.0.mlp.down_proj.weight is torch.float8_e4m3fn but "
                                             r"the checkpoint has no model.layers.0.mlp.down_proj.weight_scale_inv"):
        load(path)


def test_cli_generate_says_what_stayed_packed(tmp_path, capsys):
    from modelchip.cli.main import main

    path = tmp_path / "q8.gguf"
    write_model(path, Q.Q8_0)
    common = ["generate", "--model", str(path), "--prompt", "the", "--max-tokens", "2", "--backend", "reference",
              "--dtype", "float32", "--json"]
    assert main(common) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quantization"] == "gguf"
    assert out["dequantized_at_load"] == {"q8_0 weight not read by linear (embed_tokens)": 1}
    assert out["backend_fallbacks"]["linear: q8_0 weight dequantized per call"] > 0
    assert main([*common, "--quantization", "none"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quantization"] is None and out["dequantized_at_load"] == {} and out["backend_fallbacks"] == {}


def test_the_formats_a_packed_run_kept_are_what_its_prediction_prices(tmp_path):
    # `bench --profile` prices the run it measured: a Q4_1 file whose tied LM head is Q8_0 (as SmolLM2's is)
    from modelchip.calibrate.loop import run_precision

    path = tmp_path / "mixed.gguf"
    write_model(path, Q.Q4_1, tied=True, types={"token_embd": Q.Q8_0})
    llm = LLM(str(path), backend="reference")
    assert llm.weight_formats["lm_head"] == ("q8_0", llm.spec.vocab_size * 256)  # vocabulary x hidden
    assert {f for n, (f, _) in llm.weight_formats.items() if n != "lm_head"} == {"q4_1"}
    precision, notes = run_precision(str(path), "reference")
    assert (precision.weight, precision.attention_weight, precision.lm_head_weight) == ("q4_1", "", "q8_0")
    assert precision.kv == "fp32" and notes == []
    # q, k (Q4_0) and v (Q8_0) cannot stack packed, so the loader unpacks them to float32 beside a Q4_0 o_proj:
    # the attention is priced as its larger part (512 x 256 float32 weights against 256 x 256), and says so
    path = tmp_path / "mixed_attention.gguf"
    write_model(path, Q.Q4_0, types={"attn_v": Q.Q8_0, "token_embd": Q.F32, "output": Q.Q8_0})
    precision, notes = run_precision(str(path), "reference")
    assert (precision.weight, precision.attention_weight, precision.lm_head_weight) == ("q4_0", "fp32", "q8_0")
    assert notes == ["attention weights mix 131,072 fp32, 65,536 q4_0: priced as fp32"]
