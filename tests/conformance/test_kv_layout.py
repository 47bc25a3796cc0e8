"""Contract v2: the backend allocates the KV cache in its own layout, and the model, the engine and the
conformance kit hand its write_kv and paged_attention exactly what it allocated."""

import pytest
import torch

from modelchip import conformance
from modelchip.errors import ModelchipError
from modelchip.runtime.backends import get_backend
from modelchip.runtime.backends.cpu import CPUBackend
from modelchip.runtime.backends.reference import ReferenceBackend


class HeadMajorKV(ReferenceBackend):
    """Keeps each block head-major, [blocks, heads, block_size, d] (the reference's is slot-major), as a kernel
    that reads one head's block contiguously would."""

    name = "head-major-kv"
    contract_version = 2

    def __init__(self, device="cpu"):
        super().__init__(device)
        self.allocated: list[torch.Tensor] = []

    def allocate_kv_cache(self, layout, num_blocks, block_size, dtype):
        k = torch.zeros(num_blocks, layout.heads, block_size, layout.k_dim, dtype=dtype, device=self.device)
        v = (torch.zeros(num_blocks, layout.heads, block_size, layout.v_dim, dtype=dtype, device=self.device)
             if layout.separate_v else None)
        self.allocated += [k] + ([v] if v is not None else [])
        return k, v

    def _check(self, cache):
        if not any(cache is t for t in self.allocated):
            raise AssertionError("given a cache this backend did not allocate")

    def write_kv(self, cache, values, slot_mapping):
        self._check(cache)
        bs = cache.shape[2]
        cache.transpose(1, 2)[slot_mapping // bs, slot_mapping % bs] = values.to(cache.dtype)

    def paged_attention(self, q, k_cache, v_cache, meta, scale, v_dim=None, window=0):
        self._check(k_cache)
        return super().paged_attention(q, k_cache.transpose(1, 2), None if v_cache is None else
                                       v_cache.transpose(1, 2), meta, scale, v_dim, window)


class AllocatesOnly(ReferenceBackend):
    name = "allocates-only"
    paged_attention = None  # its own cache, but the reference's attention: it could not read that layout

    def allocate_kv_cache(self, layout, num_blocks, block_size, dtype):
        return HeadMajorKV.allocate_kv_cache(self, layout, num_blocks, block_size, dtype)


def test_a_backend_with_its_own_cache_layout_passes_conformance(register):
    register(HeadMajorKV)
    # GQA, MLA (values read from the latent keys) and MFA; attention ops and the model runs
    report = conformance.run("head-major-kv", "cpu", ["float32"], ops=["write_kv", "paged_attention"],
                             families=["llama", "deepseek_v3", "step3_text"])
    assert report.passed, report.failures
    assert [f.family for f in report.families] == ["llama", "deepseek_v3", "step3_text"]
    assert {o.op for o in report.ops} == {"paged_attention"} and len(report.ops) >= 9
    assert report.notes and "write_kv checked through the paged_attention cases" in report.notes[0]
    assert "Note: own KV cache layout" in conformance.markdown(report)


def test_the_engine_cache_is_the_backends_allocation(register, tmp_path):
    register(HeadMajorKV)
    ops = get_backend("head-major-kv")
    assert ops.owns_kv_layout and not get_backend("reference").owns_kv_layout
    assert CPUBackend.allocate_kv_cache is ReferenceBackend.allocate_kv_cache  # the cpu backend keeps the default
    from modelchip.conformance import tiny_models
    from modelchip.runtime.kv_cache import KVCache

    model = tiny_models.build(ops, "llama", tiny_models.random_state("llama"), torch.float32)
    cache = KVCache(ops, model.cache_layouts(), 5, 4, torch.float32)
    k, v = cache.layers[0]
    lay = model.cache_layouts()[0]
    assert k.shape == (5, lay.heads, 4, lay.k_dim) and v.shape == (5, lay.heads, 4, lay.v_dim)
    assert all(any(t is a for a in ops.backend.allocated) for layer in cache.layers for t in layer)


def test_a_wrong_layout_is_caught_by_conformance(register):
    class Confused(HeadMajorKV):  # writes head-major, reads as if slot-major
        name = "confused-kv"

        def paged_attention(self, q, k_cache, v_cache, meta, scale, v_dim=None, window=0):
            return ReferenceBackend.paged_attention(self, q, k_cache, v_cache, meta, scale, v_dim, window)

    register(Confused)
    report = conformance.run("confused-kv", "cpu", ["float32"], ops=["paged_attention"], families=["llama"])
    assert not report.passed
    assert any(f.startswith("op paged_attention") for f in report.failures)
    assert any(f.startswith("family llama") for f in report.failures)


def test_allocating_without_own_attention_is_refused(register):
    register(AllocatesOnly)
    with pytest.raises(ModelchipError, match="allocates its own KV cache but has no paged_attention"):
        get_backend("allocates-only")
