"""Backend registry, plugin discovery through entry points, counted fallbacks, sampling, device-free code."""

import re
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from tiny_configs import CONFIGS  # noqa: E402

from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime import backends  # noqa: E402
from modelchip.runtime.backends.reference import ReferenceBackend  # noqa: E402
from modelchip.runtime.contract import OPS  # noqa: E402

SRC = Path(__file__).parents[2] / "src" / "modelchip"


class LinearOnly:
    """A plugin that accelerates one op; everything else must fall back to the reference, counted."""

    name = "linear-only"
    contract_version = 1

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.calls = 0

    def linear(self, x, weight, bias=None):
        self.calls += 1
        return F.linear(x, weight, bias)


def test_unknown_backend_lists_known():
    with pytest.raises(ModelchipError, match="unknown backend 'nope'.*reference"):
        backends.get_backend("nope")


def test_partial_backend_falls_back_and_counts(tmp_path, monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "linear-only", LinearOnly)
    ops = backends.get_backend("linear-only")
    assert ops.native_ops == ["linear"]
    x, w = torch.randn(3, 8), torch.ones(8)
    assert torch.equal(ops.rms_norm(x, w, 1e-6), ReferenceBackend().rms_norm(x, w, 1e-6))
    ops.rms_norm(x, w, 1e-6)
    report = ops.fallback_report()
    assert report["fallback_calls"] == {"rms_norm": 2}
    assert set(report["missing_ops"]) == set(OPS) - {"linear"}


def test_model_runs_on_partial_backend_with_same_logits(tmp_path, monkeypatch):
    from modelchip.runtime.models.decoder import DecoderLM
    from modelchip.spec import families

    monkeypatch.setitem(backends.BUILTIN, "linear-only", LinearOnly)
    spec = families.read(CONFIGS["qwen3_moe"], "tiny")
    torch.manual_seed(0)
    ref = DecoderLM(backends.get_backend("reference"), spec, torch.float32)
    for p in ref.parameters():
        p.data.normal_(0, 0.1)
    ops = backends.get_backend("linear-only")
    plug = DecoderLM(ops, spec, torch.float32)
    plug.load_state_dict(ref.state_dict())
    from modelchip.runtime.contract import AttentionMetadata
    from modelchip.runtime.kv_cache import KVCache

    outs = []
    for model in (ref, plug):
        cache = KVCache(model.ops, model.cache_layouts(), 2, 8, torch.float32)
        meta = AttentionMetadata(torch.tensor([0, 10]), torch.tensor([10]), torch.tensor([[0, 1]]),
                                 torch.arange(10), 8)
        with torch.inference_mode():
            outs.append(model.logits(model(torch.arange(10), torch.arange(10), meta, cache.layers)))
    assert torch.equal(outs[0], outs[1])
    assert ops.backend.calls > 0 and ops.fallbacks["paged_attention"] == spec.num_layers


def test_plugin_discovered_through_entry_point(tmp_path, monkeypatch):
    # a minimal installed distribution: a module and a dist-info whose entry_points.txt names it
    (tmp_path / "tinyplug.py").write_text(
        "import torch\nimport torch.nn.functional as F\n"
        "class TinyBackend:\n    name = 'tiny'\n    contract_version = 1\n"
        "    def __init__(self, device='cpu'):\n        self.device = torch.device(device)\n"
        "    def linear(self, x, w, b=None):\n        return F.linear(x, w, b)\n")
    info = tmp_path / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[modelchip.backends]\ntiny = tinyplug:TinyBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "tiny" in backends.available()
    ops = backends.get_backend("tiny")
    assert ops.name == "tiny" and ops.native_ops == ["linear"]
    sys.modules.pop("tinyplug", None)


def test_contract_version_mismatch_is_refused(monkeypatch):
    class Old(LinearOnly):
        contract_version = 0

    monkeypatch.setitem(backends.BUILTIN, "old", Old)
    with pytest.raises(ModelchipError, match="contract version 0"):
        backends.get_backend("old")


def test_sampling():
    ref = ReferenceBackend()
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 0.0, 0.0]])
    zero, one = torch.zeros(2), torch.ones(2)
    none = torch.zeros(2, dtype=torch.long)
    assert ref.sample(logits, zero, one, none).tolist() == [1, 0]
    # top_k=1 and a tiny top_p both reduce sampling to the argmax
    assert ref.sample(logits, one, one, torch.ones(2, dtype=torch.long)).tolist() == [1, 0]
    assert ref.sample(logits, one, torch.full((2,), 1e-3), none).tolist() == [1, 0]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draws1 = [ref.sample(logits, one * 2, one, none, g1).tolist() for _ in range(20)]
    draws2 = [ref.sample(logits, one * 2, one, none, g2).tolist() for _ in range(20)]
    assert draws1 == draws2 and len({tuple(d) for d in draws1}) > 1  # seeded, and really sampling


def test_no_device_literals_outside_backends():
    pattern = re.compile(r"""["']cuda["']|torch\.cuda|\.cuda\(""")
    offenders = [
        f"{path.relative_to(SRC)}:{i}"
        for path in SRC.rglob("*.py") if "backends" not in path.parts
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and "# device-ok" not in line
    ]
    assert offenders == []
