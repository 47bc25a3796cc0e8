"""Contract v2's host-side attention metadata: built once per step on the host, equal to the device tensors, and
what the reference and cpu backends read shapes from, so their attention never reads metadata back from the device.

The check is a torch function mode that taints the metadata's device tensors and everything computed from them,
and records every read-back of a tainted tensor: .item(), .tolist(), bool/int/float/index, .cpu(), .numpy(),
and ops whose output size depends on tensor data (a sync on an asynchronous device)."""

import pytest

torch = pytest.importorskip("torch")

from torch.overrides import TorchFunctionMode  # noqa: E402

from modelchip.runtime.backends import get_backend  # noqa: E402
from modelchip.runtime.batch import build_batch  # noqa: E402
from modelchip.runtime.contract import AttentionMetadata  # noqa: E402

READ_BACKS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"}
DATA_SIZED = {"arange", "full", "zeros", "ones", "empty", "nonzero", "unique", "masked_select"}  # size from data


class ReadBackDetector(TorchFunctionMode):
    def __init__(self, sources):
        super().__init__()
        self.keep = list(sources)  # held so an id is never reused by a new tensor during the check
        self.tainted = {id(t) for t in sources}
        self.reads: list[str] = []

    def _is_tainted(self, obj) -> bool:
        if isinstance(obj, torch.Tensor):
            return id(obj) in self.tainted
        if isinstance(obj, tuple | list):
            return any(self._is_tainted(o) for o in obj)
        return False

    def _taint(self, obj) -> None:
        if isinstance(obj, torch.Tensor):
            self.keep.append(obj)
            self.tainted.add(id(obj))
        elif isinstance(obj, tuple | list):
            for o in obj:
                self._taint(o)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        hit = self._is_tainted(list(args) + list(kwargs.values()))
        if hit and (name in READ_BACKS or name in DATA_SIZED or
                    (name == "to" and any(str(a) == "cpu" for a in list(args[1:]) + list(kwargs.values()))) or
                    (name == "repeat_interleave" and "output_size" not in kwargs and
                     self._is_tainted(_repeats(args, kwargs)))):
            self.reads.append(name)
        out = func(*args, **kwargs)
        if hit:
            self._taint(out)
        return out


def _repeats(args, kwargs):
    """repeat_interleave's repeats: (input, repeats, ...) or the one-argument (repeats) form."""
    if "repeats" in kwargs:
        return kwargs["repeats"]
    return args[1] if len(args) > 1 else args[0]


def _device_tensors(meta: AttentionMetadata) -> list:
    return [meta.query_start_loc, meta.context_lens, meta.block_tables, meta.slot_mapping]


def _batch(seqs, block_size=4):
    """(q, k_cache, v_cache, meta) for sequences of (new tokens, context), blocks handed out in reverse."""
    tables, free = [], list(range(40))
    for _, ctx in seqs:
        tables.append([free.pop() for _ in range(-(-ctx // block_size))])
    new = [[1] * n for n, _ in seqs]
    _, _, meta = build_batch(new, [c - n for n, c in seqs], tables, block_size, torch.device("cpu"))
    g = torch.Generator().manual_seed(len(seqs))
    q = torch.randn(sum(n for n, _ in seqs), 4, 16, generator=g)
    k = torch.randn(40, block_size, 2, 16, generator=g)
    return q, k, torch.randn(40, block_size, 2, 16, generator=g), meta


def test_build_batch_host_copies_match_the_device_tensors():
    seqs = [(3, 10), (1, 17), (6, 6), (1, 2)]
    _, _, _, meta = _batch(seqs)
    assert meta.query_start_loc_cpu.device.type == "cpu" and meta.context_lens_cpu.device.type == "cpu"
    assert torch.equal(meta.query_start_loc_cpu, meta.query_start_loc.cpu())
    assert torch.equal(meta.context_lens_cpu, meta.context_lens.cpu())
    assert meta.query_start_loc_cpu is not meta.query_start_loc  # a copy, not the device tensor itself
    assert (meta.max_query_len, meta.max_context_len, meta.num_prefills, meta.num_decodes) == (6, 17, 2, 2)
    assert not meta.is_decode and _batch([(1, 5), (1, 9)])[3].is_decode


def test_metadata_made_without_host_fields_derives_them_once():
    meta = AttentionMetadata(torch.tensor([0, 2, 3]), torch.tensor([5, 9]), torch.tensor([[0, 1], [2, 3]]),
                             torch.arange(3), 8)
    assert meta.query_start_loc_cpu.tolist() == [0, 2, 3] and meta.context_lens_cpu.tolist() == [5, 9]
    assert (meta.max_query_len, meta.max_context_len, meta.num_prefills, meta.num_decodes) == (2, 9, 1, 1)
    moved = meta.to(torch.device("cpu"))
    assert moved.query_start_loc_cpu is meta.query_start_loc_cpu and moved.max_context_len == 9


def test_the_detector_catches_a_read_back():
    # the pre-v2 reference read the longest context back from the device like this, once per layer
    _, _, _, meta = _batch([(1, 5), (1, 9)])
    with ReadBackDetector(_device_tensors(meta)) as mode:
        int(meta.context_lens.max())
        meta.query_start_loc.tolist()
    assert mode.reads == ["__int__", "tolist"]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("seqs,window", [([(11, 11)], 0), ([(3, 10), (1, 17), (6, 6)], 0), ([(1, 5), (1, 9)], 0),
                                         ([(1, 13), (1, 3)], 4), ([(10, 10), (1, 13)], 4)],
                         ids=["prefill", "mixed", "decode", "decode-window", "prefill-window"])
@pytest.mark.parametrize("mla", [False, True], ids=["gqa", "mla"])
def test_attention_reads_no_metadata_back_from_the_device(backend, seqs, window, mla):
    ops = get_backend(backend, "cpu")
    q, k, v, meta = _batch(seqs)
    if mla:
        k, v = k[:, :, :1].contiguous(), None
    kwargs = {"v_dim": 8} if mla else {}
    expected = get_backend("reference").paged_attention(q, k, v, meta, 0.25, window=window, **kwargs)
    with torch.inference_mode(), ReadBackDetector(_device_tensors(meta)) as mode:
        ops.write_kv(k, k.flatten(0, 1)[meta.slot_mapping], meta.slot_mapping)  # rewrite the new tokens' slots
        out = ops.paged_attention(q, k, v, meta, 0.25, window=window, **kwargs)
    assert mode.reads == []
    assert torch.allclose(out, expected, atol=1e-5)
