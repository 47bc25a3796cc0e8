"""The runtime against transformers on tiny random checkpoints that transformers itself saved (see conftest.py).

Logits of a full forward within 1e-4, greedy tokens identical, batching changes nothing, sharded checkpoints and
hub-style (pre-transformers-5) config fields load the same weights, and bad input is refused with a
ModelchipError that names the problem and keeps no half-loaded weights or engine state.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from modelchip import LLM  # noqa: E402
from modelchip.errors import ModelchipError  # noqa: E402

LOGITS_ATOL = 1e-4
NEW_TOKENS = 32


# ---------------------------------------------------------------------------------------------------- helpers


def load(path, **kwargs):
    return LLM(str(path), backend="reference", device="cpu", dtype="float32", **kwargs)


def token_ids(n: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def vocab_of(ckpt) -> int:
    return int(ckpt.model.config.vocab_size)


def hf_logits(model, ids: list[int]):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


_HF_GREEDY: dict[tuple[str, tuple[int, ...]], list[int]] = {}


def hf_greedy(ckpt, prompt: list[int], n: int = NEW_TOKENS) -> list[int]:
    key = (ckpt.name, tuple(prompt))
    if key not in _HF_GREEDY:
        x = torch.tensor([prompt])
        with torch.no_grad():
            out = ckpt.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                      min_new_tokens=n)
        _HF_GREEDY[key] = out[0, len(prompt):].tolist()
        assert len(_HF_GREEDY[key]) == n, "transformers stopped early: EOS is not disabled in the fixture"
    return _HF_GREEDY[key]


def divergence(ckpt, prompt: list[int], got: list[int], want: list[int]) -> str:
    """Where greedy tokens first differ, and how clear transformers' choice was there."""
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    if i >= len(want):
        return f"got {len(got)} tokens, transformers {len(want)}:\n got  {got}\n want {want}"
    top2 = hf_logits(ckpt.model, prompt + want[:i])[-1].topk(2).values
    return (f"first difference at new token {i} (transformers' top-1/top-2 logit gap there: "
            f"{(top2[0] - top2[1]).item():.3g}):\n got  {got}\n want {want}")


def new_tokens(outputs, n_prompts: int) -> list[list[int]]:
    assert len(outputs) == n_prompts
    result = [[int(t) for t in out.token_ids] for out in outputs]
    assert all(len(r) == NEW_TOKENS for r in result), [len(r) for r in result]
    return result


def copy_checkpoint(ckpt, tmp_path: Path) -> Path:
    dst = tmp_path / f"{ckpt.name}-copy"
    shutil.copytree(ckpt.path, dst)
    return dst


def edit_config(path: Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config, indent=2))


def edit_tensors(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = safetensors_torch.load_file(str(file))
    edit(tensors)
    safetensors_torch.save_file(tensors, str(file), metadata={"format": "pt"})
    del tensors


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage still reachable from Python objects."""
    gc.collect()
    seen, total = set(), 0
    for obj in gc.get_objects():
        if not issubclass(type(obj), torch.Tensor) or obj.is_meta:
            continue
        try:
            storage = obj.untyped_storage()
            # fake tensors (left in torch.compile's caches by an earlier test in this process) hold no memory
            key = (storage.data_ptr(), storage.nbytes())
        except (RuntimeError, NotImplementedError):
            continue
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def refused(action, checkpoint_dir: Path | None = None) -> str:
    """Run `action`, which must raise ModelchipError; return the message. Loading must not keep weights alive."""
    before = live_tensor_bytes()
    with pytest.raises(ModelchipError) as info:
        action()
    message = str(info.value)
    del info  # the traceback holds the failed call's frames; drop it before counting
    if checkpoint_dir is not None:
        leaked = live_tensor_bytes() - before
        size = sum(f.stat().st_size for f in checkpoint_dir.iterdir() if f.suffix in (".safetensors", ".bin"))
        assert leaked < size // 2, (f"a refused load left {leaked} bytes of tensors alive (checkpoint: {size} bytes);"
                                    " weights of a failed load must not stay cached")
    return message


def shape_pattern(shape) -> str:
    return r"(?<!\d)" + r"\D{1,4}".join(str(d) for d in shape) + r"(?!\d)"


# ---------------------------------------------------------------------------------------------------- parity


def test_logits_match_transformers(hf_family, hf_checkpoint):
    ckpt = hf_checkpoint(hf_family)
    ids = token_ids(64, seed=100, vocab=vocab_of(ckpt))
    got = load(ckpt.path).logits(ids)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == (64, vocab_of(ckpt))
    want = hf_logits(ckpt.model, ids)
    diff = (got.detach().cpu() - want).abs().max().item()
    assert diff <= LOGITS_ATOL, f"{hf_family}: max |logits - transformers| = {diff:.3g} (logits std {want.std():.3g})"


def test_single_token_logits(hf_family, hf_checkpoint):
    ckpt = hf_checkpoint(hf_family)
    ids = token_ids(1, seed=101, vocab=vocab_of(ckpt))
    got = load(ckpt.path).logits(ids)
    assert tuple(got.shape) == (1, vocab_of(ckpt))
    assert (got.detach().cpu() - hf_logits(ckpt.model, ids)).abs().max().item() <= LOGITS_ATOL


def test_greedy_matches_transformers(hf_family, hf_checkpoint):
    ckpt = hf_checkpoint(hf_family)
    prompt = token_ids(16, seed=200, vocab=vocab_of(ckpt))
    out = load(ckpt.path).generate([prompt], max_tokens=NEW_TOKENS, temperature=0.0, seed=0)
    (got,) = new_tokens(out, 1)
    want = hf_greedy(ckpt, prompt)
    assert got == want, f"{hf_family}: " + divergence(ckpt, prompt, got, want)


def test_batch_gives_same_tokens_as_alone(hf_family, hf_checkpoint):
    ckpt = hf_checkpoint(hf_family)
    a = token_ids(16, seed=300, vocab=vocab_of(ckpt))
    b = token_ids(9, seed=301, vocab=vocab_of(ckpt))  # another length: ragged batch
    llm = load(ckpt.path)
    both = new_tokens(llm.generate([a, b], max_tokens=NEW_TOKENS, temperature=0.0, seed=0), 2)
    alone_a = new_tokens(llm.generate([a], max_tokens=NEW_TOKENS, temperature=0.0, seed=0), 1)[0]
    alone_b = new_tokens(llm.generate([b], max_tokens=NEW_TOKENS, temperature=0.0, seed=0), 1)[0]
    assert both[0] == alone_a, f"{hf_family}, prompt 0 batched vs alone:\n {both[0]}\n {alone_a}"
    assert both[1] == alone_b, f"{hf_family}, prompt 1 batched vs alone:\n {both[1]}\n {alone_b}"
    want_b = hf_greedy(ckpt, b)
    assert alone_b == want_b, f"{hf_family} (9-token prompt): " + divergence(ckpt, b, alone_b, want_b)


def test_parameter_count_matches_transformers(hf_family, hf_checkpoint):
    """The cost model's parameter count of the saved config.json (biases and switches included) is the number
    of weights transformers builds from it."""
    from modelchip.cost import accounting
    from modelchip.spec import families

    ckpt = hf_checkpoint(hf_family)
    want = sum(p.numel() for p in ckpt.model.parameters())
    want += sum(b.numel() for n, b in ckpt.model.named_buffers() if n.endswith("e_score_correction_bias"))
    spec = families.read(json.loads((ckpt.path / "config.json").read_text()), hf_family)
    assert accounting.params(spec).total == want


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_sharded_checkpoint_matches_unsharded(hf_checkpoint):
    sharded, single = hf_checkpoint("llama_sharded"), hf_checkpoint("llama")
    assert (sharded.path / "model.safetensors.index.json").is_file()
    ids = token_ids(64, seed=400, vocab=vocab_of(single))
    got = load(sharded.path).logits(ids).detach().cpu()
    ref = load(single.path).logits(ids).detach().cpu()
    assert (got - ref).abs().max().item() <= 1e-6, "same weights, sharded or not, must give the same logits"
    assert (got - hf_logits(single.model, ids)).abs().max().item() <= LOGITS_ATOL


def test_missing_shard_file_is_named(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint("llama_sharded"), tmp_path)
    shard = sorted(path.glob("model-*-of-*.safetensors"))[-1]
    shard.unlink()
    message = refused(lambda: load(path), path)
    assert shard.name in message, message


def _rope_theta_top_level(config):
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]


def _qwen3_moe_hub_names(config):
    config["num_experts"] = config.pop("num_local_experts")
    _rope_theta_top_level(config)


def _deepseek_v3_hub_config(config):
    # as in deepseek-ai/DeepSeek-V3's config.json: rope_theta + rope_scaling{"type": "yarn"}, no rope_interleave
    # (interleaved is the default), no head_dim
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    config["rope_scaling"] = rope
    del config["rope_interleave"], config["head_dim"]


@pytest.mark.parametrize(("name", "edit"), [
    ("llama", _rope_theta_top_level),
    ("mixtral", _rope_theta_top_level),
    ("qwen3_moe", _qwen3_moe_hub_names),
    ("deepseek_v3", _deepseek_v3_hub_config),
], ids=["llama-rope_theta", "mixtral-rope_theta", "qwen3_moe-num_experts", "deepseek_v3-rope_scaling"])
def test_hub_style_config_fields(name, edit, hf_checkpoint, tmp_path):
    """config.json as published on the hub (written before transformers 5) means the same model."""
    ckpt = hf_checkpoint(name)
    path = copy_checkpoint(ckpt, tmp_path)
    edit_config(path, edit)
    ids = token_ids(64, seed=500, vocab=vocab_of(ckpt))
    got = load(path).logits(ids).detach().cpu()
    diff = (got - hf_logits(ckpt.model, ids)).abs().max().item()
    assert diff <= LOGITS_ATOL, f"{name} with hub-style config fields: max |logits - transformers| = {diff:.3g}"


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("name", "tensor"), [
    ("llama", "lm_head.weight"),  # untied: must not silently fall back to the embedding
    ("llama", "model.layers.1.self_attn.o_proj.weight"),
    ("qwen2", "model.layers.0.self_attn.k_proj.bias"),
    ("qwen3", "model.layers.1.self_attn.q_norm.weight"),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.3.w2.weight"),
    ("deepseek_v3", "model.layers.2.mlp.experts.5.up_proj.weight"),
    ("deepseek_v3", "model.layers.1.mlp.gate.e_score_correction_bias"),
])
def test_missing_tensor_is_named(name, tensor, hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(name), tmp_path)

    def drop(tensors):
        assert tensor in tensors, f"fixture has no tensor {tensor}: {sorted(tensors)}"
        del tensors[tensor]

    edit_tensors(path, drop)
    message = refused(lambda: load(path), path)
    assert tensor in message, message


@pytest.mark.parametrize(("name", "tensor"), [
    ("llama", "model.layers.0.mlp.gate_proj.weight"),
    ("deepseek_v3", "model.layers.1.mlp.experts.3.down_proj.weight"),
])
def test_wrong_shape_is_named(name, tensor, hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(name), tmp_path)
    shapes = {}

    def reshape(tensors):
        expected = tuple(tensors[tensor].shape)
        actual = (expected[0] + 1, *expected[1:])
        tensors[tensor] = torch.zeros(actual)
        shapes.update(expected=expected, actual=actual)

    edit_tensors(path, reshape)
    message = refused(lambda: load(path), path)
    assert tensor in message, message
    for which, shape in shapes.items():
        assert re.search(shape_pattern(shape), message), f"message lacks the {which} shape {shape}: {message}"


@pytest.mark.parametrize(("architecture", "model_type"), [
    ("GPT2LMHeadModel", "gpt2"),  # unknown to modelchip
    ("Llama4ForCausalLM", "llama4_text"),  # known to the cost model, not runnable
])
def test_unsupported_architecture_lists_supported(architecture, model_type, hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint("llama"), tmp_path)

    def retype(config):
        config["architectures"] = [architecture]
        config["model_type"] = model_type

    edit_config(path, retype)
    message = refused(lambda: load(path), path)
    lowered = message.lower()
    assert model_type.split("_")[0] in lowered, message
    for supported in [r"llama(?!4)", r"qwen2", r"qwen3", r"qwen3_?moe", r"mixtral", r"deepseek_?v3"]:
        assert re.search(supported, lowered), f"supported family {supported!r} not listed: {message}"


@pytest.fixture
def llama(hf_checkpoint):
    ckpt = hf_checkpoint("llama")
    return ckpt, load(ckpt.path)


def assert_still_works(ckpt, llm):
    """After refusing bad input the engine holds no stale sequences: it answers exactly as a fresh one."""
    ids = token_ids(64, seed=100, vocab=vocab_of(ckpt))
    assert (llm.logits(ids).detach().cpu() - hf_logits(ckpt.model, ids)).abs().max().item() <= LOGITS_ATOL
    prompt = token_ids(16, seed=200, vocab=vocab_of(ckpt))
    (got,) = new_tokens(llm.generate([prompt], max_tokens=NEW_TOKENS, temperature=0.0, seed=0), 1)
    assert got == hf_greedy(ckpt, prompt)


@pytest.mark.parametrize("bad", ["vocab", -1, 10**9])
def test_token_ids_outside_vocabulary(bad, llama):
    ckpt, llm = llama
    bad = vocab_of(ckpt) if bad == "vocab" else bad
    good = token_ids(16, seed=600, vocab=vocab_of(ckpt))
    for action in (lambda: llm.logits([1, 2, bad, 3]),
                   lambda: llm.generate([[1, bad]], max_tokens=4, temperature=0.0),
                   lambda: llm.generate([good, [bad]], max_tokens=4, temperature=0.0)):
        message = refused(action)
        assert "vocab" in message.lower(), message
        assert str(bad) in message, message
    assert_still_works(ckpt, llm)


def test_empty_prompt(llama):
    ckpt, llm = llama
    good = token_ids(16, seed=700, vocab=vocab_of(ckpt))
    for action in (lambda: llm.logits([]),
                   lambda: llm.generate([[]], max_tokens=4, temperature=0.0),
                   lambda: llm.generate([good, []], max_tokens=4, temperature=0.0)):
        message = refused(action)
        assert "empty" in message.lower(), message
    assert_still_works(ckpt, llm)


@pytest.fixture
def pickle_checkpoint(hf_checkpoint, tmp_path):
    """The llama weights as a PyTorch pickle (pytorch_model.bin) and no safetensors."""
    ckpt = hf_checkpoint("llama")
    path = tmp_path / "pickled"
    path.mkdir()
    shutil.copy(ckpt.path / "config.json", path / "config.json")
    torch.save({k: v.detach().clone() for k, v in ckpt.model.state_dict().items()}, path / "pytorch_model.bin")
    return ckpt, path


@pytest.fixture
def torch_load_calls(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_pickle_checkpoint_refused_without_opt_in(pickle_checkpoint, torch_load_calls):
    _, path = pickle_checkpoint
    message = refused(lambda: load(path), path)
    assert re.search(r"pickle|weights_only", message, re.IGNORECASE), message
    assert torch_load_calls == [], "the pickle was opened before refusing it"


def test_pickle_checkpoint_with_opt_in(pickle_checkpoint, torch_load_calls):
    ckpt, path = pickle_checkpoint
    ids = token_ids(64, seed=800, vocab=vocab_of(ckpt))
    got = load(path, allow_pickle=True).logits(ids).detach().cpu()
    assert torch_load_calls and all(call.get("weights_only") is True for call in torch_load_calls), torch_load_calls
    assert (got - hf_logits(ckpt.model, ids)).abs().max().item() <= LOGITS_ATOL


def test_safetensors_preferred_over_pickle(hf_checkpoint, tmp_path, torch_load_calls):
    """Hub repos often ship both; the safetensors are read and the pickle is never opened."""
    ckpt = hf_checkpoint("llama")
    path = copy_checkpoint(ckpt, tmp_path)
    torch.save({k: torch.zeros_like(v) for k, v in ckpt.model.state_dict().items()}, path / "pytorch_model.bin")
    ids = token_ids(64, seed=900, vocab=vocab_of(ckpt))
    got = load(path).logits(ids).detach().cpu()
    assert torch_load_calls == []
    assert (got - hf_logits(ckpt.model, ids)).abs().max().item() <= LOGITS_ATOL


# ---------------------------------------------------------------------------------------------------- switches


SWITCH_FAMILIES = ["llama_bias", "mistral_sliding", "mixtral_sliding", "qwen2_sliding", "qwen3_bias_sliding",
                   "qwen3_moe_bias_sliding", "deepseek_v3_bias"]


@pytest.mark.parametrize("name", SWITCH_FAMILIES)
def test_switches_on_cpu_backend(name, hf_checkpoint):
    """The fast backend honours the same switches (biases through its packed matmul, windows in its kernels)."""
    ckpt = hf_checkpoint(name)
    ids = token_ids(64, seed=1000, vocab=vocab_of(ckpt))
    got = LLM(str(ckpt.path), backend="cpu", device="cpu", dtype="float32").logits(ids).detach().cpu()
    diff = (got - hf_logits(ckpt.model, ids)).abs().max().item()
    assert diff <= LOGITS_ATOL, f"{name} on the cpu backend: max |logits - transformers| = {diff:.3g}"


@pytest.mark.parametrize(("name", "tensor", "shape"), [
    ("llama", "model.layers.0.self_attn.o_proj.bias", (64,)),  # a bias the config does not switch on
    ("qwen2", "model.layers.1.self_attn.o_proj.bias", (64,)),  # Qwen2 has q/k/v biases only
    ("llama", "model.layers.0.mlp.down_proj.weight_scale_inv", (1, 1)),  # a quantization scale
    ("llama", "model.layers.2.input_layernorm.weight", (64,)),  # a layer beyond num_hidden_layers
])
def test_unused_tensor_is_named(name, tensor, shape, hf_checkpoint, tmp_path):
    """A checkpoint tensor with no place in the model fails the load, naming it (it was silently dropped)."""
    path = copy_checkpoint(hf_checkpoint(name), tmp_path)
    edit_tensors(path, lambda tensors: tensors.update({tensor: torch.ones(shape)}))
    message = refused(lambda: load(path), path)
    assert tensor in message, message


def test_ignorable_tensors_load(hf_checkpoint, tmp_path):
    """The documented exceptions: rotary inv_freq caches, and a saved copy of a tied head."""
    ckpt = hf_checkpoint("llama_tied")
    path = copy_checkpoint(ckpt, tmp_path)
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8),
             "lm_head.weight": ckpt.model.get_input_embeddings().weight.detach().clone()}
    edit_tensors(path, lambda tensors: tensors.update(extra))
    llm = load(path)
    assert sorted(llm.ignored_tensors) == sorted(extra)
    ids = token_ids(64, seed=1100, vocab=vocab_of(ckpt))
    assert (llm.logits(ids).detach().cpu() - hf_logits(ckpt.model, ids)).abs().max().item() <= LOGITS_ATOL


def test_deepseek_mtp_layers_are_skipped(hf_checkpoint, tmp_path):
    """DeepSeek-V3's multi-token-prediction layer (numbered num_hidden_layers) is skipped when the config
    declares it with num_nextn_predict_layers, and refused when it does not."""
    ckpt = hf_checkpoint("deepseek_v3")
    path = copy_checkpoint(ckpt, tmp_path)
    mtp = "model.layers.3.eh_proj.weight"
    edit_tensors(path, lambda tensors: tensors.update({mtp: torch.ones(64, 128)}))
    edit_config(path, lambda config: config.update(num_nextn_predict_layers=0))
    assert mtp in refused(lambda: load(path), path)
    edit_config(path, lambda config: config.update(num_nextn_predict_layers=1))
    llm = load(path)
    assert llm.ignored_tensors == [mtp]
    ids = token_ids(64, seed=1200, vocab=vocab_of(ckpt))
    assert (llm.logits(ids).detach().cpu() - hf_logits(ckpt.model, ids)).abs().max().item() <= LOGITS_ATOL


@pytest.mark.parametrize(("name", "field", "value"), [
    ("llama", "hidden_act", "gelu"),
    ("mistral_sliding", "attention_bias", True),  # transformers' Mistral ignores it, vLLM's applies it
    ("qwen3", "mlp_bias", True),
    ("llama", "quantization_config", {"quant_method": "fp8"}),
    ("llama", "partial_rotary_factor", 0.5),
    ("qwen3_bias_sliding", "layer_types", ["full_attention", "chunked_attention"]),
    ("deepseek_v3", "scoring_func", "sqrtsoftplus"),
])
def test_unsupported_switch_is_named(name, field, value, hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(name), tmp_path)
    edit_config(path, lambda config: config.update({field: value}))
    message = refused(lambda: load(path), path)
    assert field in message, message
