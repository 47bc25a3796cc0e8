"""The cpu backend's fused C++ kernels against the eager PyTorch ops they replace: the same roundings (equal
results for norm, rotary, SiLU-and-mul and cache writes), decode attention read from the paged cache against
the gathered-and-masked SDPA path, each in every copy of the loops this CPU can run (AVX-512, AVX2, baseline),
bad metadata refused with a message, and a visible count when the kernels are off."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from modelchip.runtime.backends import cpu_kernels  # noqa: E402
from modelchip.runtime.backends.cpu import CPUBackend  # noqa: E402
from modelchip.runtime.backends.reference import ReferenceBackend  # noqa: E402
from modelchip.runtime.contract import AttentionMetadata  # noqa: E402

needs_kernels = pytest.mark.usefixtures("kernels")  # built once per session on first use, not at collection
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _eager() -> CPUBackend:
    backend = CPUBackend()
    backend.kernels, backend.kernels_missing = None, "kernels off for this test"
    return backend


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 33])
def test_norm_rotary_silu_match_eager_roundings(dtype, rows, isa):
    g = torch.Generator().manual_seed(rows)
    fused, eager = CPUBackend(), _eager()
    x = (torch.randn(rows, 96, generator=g) * 3).to(dtype)
    w = torch.randn(96, generator=g).to(dtype)

    def same(got, want):
        if dtype == torch.float32:  # no rounding to hide summation order and fused multiply-adds in float32
            return torch.allclose(got, want, rtol=2e-6, atol=1e-6)
        return torch.equal(got, want)

    assert same(fused.rms_norm(x, w, 1e-6), eager.rms_norm(x, w, 1e-6))
    qkv = torch.randn(rows, 7 * 32, generator=g).to(dtype)
    q = qkv[:, :4 * 32].view(rows, 4, 32)  # a strided view, as the model's q/k/v split hands it over
    cos, sin = torch.randn(rows, 16, generator=g), torch.randn(rows, 16, generator=g)
    assert same(fused.rotary_embedding(q, cos, sin), eager.rotary_embedding(q, cos, sin))
    gate_up = (torch.randn(rows, 2 * 80, generator=g) * 4).to(dtype)
    got, want = fused.silu_and_mul(gate_up).float(), eager.silu_and_mul(gate_up).float()
    # the kernel's exp is a polynomial (relative error < 2e-7): at most one rounding step apart
    assert torch.allclose(got, want, rtol=2e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)
    assert fused.fallbacks == {} and eager.fallbacks["kernels off for this test"] == 3


@needs_kernels
def test_write_kv_stores_rows_at_slots_and_refuses_a_slot_outside():
    fused = CPUBackend()
    cache, want = torch.zeros(4, 8, 2, 16), torch.zeros(4, 8, 2, 16)
    values = torch.randn(3, 2 * 16).view(3, 2, 16)
    slots = torch.tensor([31, 0, 9])
    fused.write_kv(cache, values, slots)
    ReferenceBackend().write_kv(want, values, slots)
    assert torch.equal(cache, want)
    with pytest.raises(RuntimeError, match="slot 32 outside the cache"):
        fused.write_kv(cache, values, torch.tensor([1, 2, 32]))


def _paged(seqs_ctx, block_size, groups, dk, dv, dtype, separate_v, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks_per = [-(-c // block_size) for c in seqs_ctx]
    total = sum(blocks_per) + 3
    order = torch.randperm(total, generator=g).tolist()  # blocks scattered over the cache, as a pool leaves them
    width = max(blocks_per)
    tables, at = [], 0
    for n in blocks_per:
        tables.append(order[at:at + n] + [-1] * (width - n))
        at += n
    k = torch.randn(total, block_size, groups, dk, generator=g).to(dtype)
    v = torch.randn(total, block_size, groups, dv, generator=g).to(dtype) if separate_v else None
    meta = AttentionMetadata(torch.arange(len(seqs_ctx) + 1), torch.tensor(seqs_ctx), torch.tensor(tables),
                             torch.zeros(len(seqs_ctx), dtype=torch.long), block_size)
    return k, v, meta


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "groups", "dk", "dv", "separate_v", "window", "ctx"), [
    (9, 3, 64, 64, True, 0, [1, 17, 96]),          # SmolLM2's GQA
    (4, 4, 12, 12, True, 0, [5, 3]),               # MHA, widths not a multiple of 16
    (8, 2, 32, 24, True, 6, [40, 7, 1]),           # sliding window, d_v != d_k
    (4, 1, 40, 32, False, 0, [30, 2]),             # MLA-style: values are the keys' first channels
    (8, 2, 128, 128, True, 21, [53, 16, 1]),       # the register kernel: 128 wide, a window, 16-key runs
    (6, 3, 64, 128, True, 0, [33, 47]),            # the register kernel with d_v != d_k
    (4, 1, 64, 64, False, 0, [70, 5]),             # the register kernel on values read from K
])
def test_decode_attention_from_paged_cache_matches_gathered_sdpa(dtype, heads, groups, dk, dv, separate_v, window,
                                                                 ctx, isa):
    k, v, meta = _paged(ctx, 4, groups, dk, dv, dtype, separate_v)
    q = torch.randn(len(ctx), heads, dk, generator=torch.Generator().manual_seed(1)).to(dtype)
    v_dim = None if separate_v else dv
    got = CPUBackend().paged_attention(q, k, v, meta, 0.3, v_dim=v_dim, window=window).float()
    want = _eager().paged_attention(q, k, v, meta, 0.3, v_dim=v_dim, window=window).float()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert got.shape == (len(ctx), heads, dv)
    assert torch.allclose(got, want, rtol=tol, atol=tol), (got - want).abs().max()


def test_kernels_can_be_turned_off_and_say_so(monkeypatch):
    monkeypatch.setenv("MODELCHIP_CPU_KERNELS", "0")
    module, why = cpu_kernels._build()
    assert module is None and "MODELCHIP_CPU_KERNELS=0" in why


def test_build_dir_follows_the_sources_not_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELCHIP_CACHE", str(tmp_path / "cache"))
    first = cpu_kernels.build_dir()
    assert first.parent == tmp_path / "cache" / "cpu_kernels" and cpu_kernels.build_dir() == first
    copies = []
    for path in cpu_kernels.SOURCES + cpu_kernels.HEADERS:  # the same sources elsewhere: the same build
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    monkeypatch.setattr(cpu_kernels, "SOURCES", copies[:-1])
    monkeypatch.setattr(cpu_kernels, "HEADERS", copies[-1:])
    assert cpu_kernels.build_dir() == first
    copies[-1].write_text(copies[-1].read_text() + "\n// edited\n")  # an edited header: a new build
    assert cpu_kernels.build_dir() != first


def _bad_attention_inputs():
    """(what is wrong, keyword overrides, message): one valid decode batch of two sequences, then one fault each."""
    k, v, meta = _paged([5, 9], 4, 2, 16, 16, torch.float32, True)  # 2 + 3 blocks of the cache's 8
    good = {"q": torch.randn(2, 4, 16), "k": k, "v": v, "v_dim": 0, "tables": meta.block_tables,
            "lens": meta.context_lens, "window": 0}
    tables = meta.block_tables
    return good, [
        ("query wider than the cache row", {"q": torch.randn(2, 4, 32)}, "queries are 32 wide but cache rows 16"),
        ("context past the block table", {"lens": torch.tensor([5, 13])}, "context length 13 but its block table"),
        ("block id past the cache", {"tables": tables.clone().index_put_((torch.tensor(1), torch.tensor(2)),
                                                                         torch.tensor(8))},
         "reads block 8 .* cache has 8 blocks"),
        ("padding id inside the context", {"tables": tables.clone().index_put_((torch.tensor(0), torch.tensor(1)),
                                                                               torch.tensor(-1))},
         "reads block -1"),
        ("empty context", {"lens": torch.tensor([0, 9])}, "context length 0; need >= 1"),
        ("table rows per sequence", {"tables": tables[:1]}, "2 queries, 1 block table rows"),
        ("float block table", {"tables": tables.float()}, "block_tables must hold integers"),
        ("q and cache dtypes", {"q": torch.randn(2, 4, 16).bfloat16()}, "q is BFloat16, the cache Float"),
        ("heads and groups", {"q": torch.randn(2, 3, 16)}, "3 query heads are not a multiple of 2"),
        ("value cache shape", {"v": v[:, :2]}, "v_cache .* does not match k_cache"),
        ("value width", {"v": None, "v_dim": 17}, "value width 17 outside the cache row of 16"),
        ("negative window", {"window": -1}, "window must be >= 0"),
    ]


@needs_kernels
@pytest.mark.parametrize("case", range(12))
def test_decode_attention_refuses_bad_metadata_before_reading(case, kernels):
    good, cases = _bad_attention_inputs()
    assert len(cases) == 12
    _, change, message = cases[case]
    args = {**good, **change}
    kernels.decode_attention(good["q"], good["k"], good["v"], 0, good["tables"], good["lens"], 0.25, 0)  # the base runs
    with pytest.raises(RuntimeError, match=message):
        kernels.decode_attention(args["q"], args["k"], args["v"], args["v_dim"], args["tables"], args["lens"], 0.25,
                                 args["window"])


@needs_kernels
def test_backend_passes_the_kernels_error_through():
    k, v, meta = _paged([5, 9], 4, 2, 16, 16, torch.float32, True)
    meta = AttentionMetadata(meta.query_start_loc, torch.tensor([5, 40]), meta.block_tables, meta.slot_mapping, 4)
    with pytest.raises(RuntimeError, match="context length 40"):
        CPUBackend().paged_attention(torch.randn(2, 4, 16), k, v, meta, 0.25)


@needs_kernels
@pytest.mark.parametrize(("call", "message"), [
    (lambda K: K.rms_norm(torch.randn(3, 8), torch.ones(7), 1e-6), "weight has 7 elements for rows of 8"),
    (lambda K: K.rms_norm(torch.randn(3, 0), torch.ones(0), 1e-6), "rows of at least one element"),
    (lambda K: K.rms_norm(torch.ones(3, 8, dtype=torch.long), torch.ones(8), 1e-6), "x must be floating point"),
    (lambda K: K.rotary(torch.randn(3, 2, 8), torch.randn(3, 4), torch.randn(2, 4)), r"cos and sin must be \[T, d/2\]"),
    (lambda K: K.rotary(torch.randn(3, 2, 7), torch.randn(3, 3), torch.randn(3, 3)), "even d"),
    (lambda K: K.rotary(torch.randn(3, 2, 8), torch.randn(12), torch.randn(3, 4)), r"cos and sin must be \[T, d/2\]"),
    (lambda K: K.silu_and_mul(torch.randn(3, 7)), "last dim must be even and positive"),
    (lambda K: K.silu_and_mul(torch.randn(3, 0)), "last dim must be even and positive"),
    (lambda K: K.write_kv(torch.zeros(4, 8, 2, 16), torch.randn(3, 2, 16), torch.tensor([1, 2])), "2 slots for 3 rows"),
    (lambda K: K.write_kv(torch.zeros(4, 8, 2, 16), torch.randn(3, 2, 15), torch.tensor([1, 2, 3])),
     "do not split into rows of the cache's 32 elements"),
    (lambda K: K.write_kv(torch.zeros(4, 8, 2, 16), torch.randn(3, 32).bfloat16(), torch.tensor([1, 2, 3])),
     "values are BFloat16, the cache Float"),
    (lambda K: K.write_kv(torch.zeros(0, 8, 2, 16), torch.randn(1, 32), torch.tensor([0])), "at least one slot"),
    (lambda K: K.write_kv(torch.zeros(4, 8, 2, 16), torch.randn(1, 32), torch.tensor([0.5])),
     "slot_mapping must hold integers"),
])
def test_kernels_refuse_bad_shapes_with_a_message(call, message, kernels):
    with pytest.raises(RuntimeError, match=message):
        call(kernels)


def test_a_failed_build_is_remembered_with_its_reason(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setenv("MODELCHIP_CACHE", str(tmp_path))
    monkeypatch.delenv("MODELCHIP_CPU_KERNELS", raising=False)
    calls = []

    def broken(**kwargs):
        calls.append(kwargs["build_directory"])
        raise RuntimeError("Error building extension 'modelchip_cpu_kernels':\n[1/3] c++ -c cpu_kernels.cpp\n"
                           "cpu_kernels.cpp:3:1: error: 'bar' was not declared in this scope\n"
                           "ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(cpp_extension, "load", broken)
    module, why = cpu_kernels._build()
    assert module is None and "error: 'bar' was not declared" in why and len(calls) == 1
    assert cpu_kernels.failure_marker().parent == Path(calls[0])
    module, why = cpu_kernels._build()  # what the next process does: read the reason, do not compile again
    assert module is None and len(calls) == 1
    assert "'bar' was not declared" in why and "MODELCHIP_CPU_KERNELS=rebuild" in why
    monkeypatch.setenv("MODELCHIP_CPU_KERNELS", "rebuild")
    cpu_kernels._build()
    assert len(calls) == 2
    monkeypatch.delenv("MODELCHIP_CPU_KERNELS")
    cpu_kernels.failure_marker().unlink()  # the other way to retry
    cpu_kernels._build()
    assert len(calls) == 3


def test_collecting_the_tests_builds_nothing(tmp_path):
    env = {**os.environ, "MODELCHIP_CACHE": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                          str(Path(__file__).parent)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert not (tmp_path / "cpu_kernels").exists(), "collection started a kernel build"


def _mixed_step(dtype, window):
    """One step as the engine builds it: a prompt prefilled whole, a decode, and a later chunk of a prompt."""
    g = torch.Generator().manual_seed(5)
    ctx, new = [7, 20, 33], [7, 1, 5]
    k, v, meta = _paged(ctx, 4, 2, 64, 64, dtype, True, seed=3)
    starts = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()])
    meta = AttentionMetadata(starts, meta.context_lens, meta.block_tables, torch.zeros(sum(new), dtype=torch.long), 4)
    q = torch.randn(sum(new), 6, 64, generator=g).to(dtype)
    return q, k, v, meta, window


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [0, 6])
def test_prefill_and_mixed_steps_match_per_sequence_sdpa(dtype, window):
    q, k, v, meta, window = _mixed_step(dtype, window)
    got = CPUBackend().paged_attention(q, k, v, meta, 0.125, window=window).float()
    want = _eager().paged_attention(q, k, v, meta, 0.125, window=window).float()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(got, want, rtol=tol, atol=tol), (got - want).abs().max()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_query_gets_the_same_bits_alone_as_in_its_step(dtype):
    # batch invariance at the op: each query token run as a one-token step over its own context
    q, k, v, meta, _ = _mixed_step(dtype, 0)
    together = CPUBackend().paged_attention(q, k, v, meta, 0.125)
    starts, lens = meta.query_start_loc.tolist(), meta.context_lens.tolist()
    for s in range(meta.num_seqs):
        for t in range(starts[s], starts[s + 1]):
            ctx = lens[s] - (starts[s + 1] - 1 - t)
            alone = AttentionMetadata(torch.tensor([0, 1]), torch.tensor([ctx]), meta.block_tables[s:s + 1],
                                      torch.zeros(1, dtype=torch.long), 4)
            assert torch.equal(CPUBackend().paged_attention(q[t:t + 1], k, v, alone, 0.125), together[t:t + 1])


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_process(kernels, tmp_path):
    # torch's build lock is a plain file: a process killed mid-build leaves it, and torch waits on it forever
    cache = tmp_path / "cache"
    env = {**os.environ, "MODELCHIP_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    where = "from modelchip.runtime.backends import cpu_kernels; print(cpu_kernels.build_dir())"
    target = Path(subprocess.run([sys.executable, "-c", where], capture_output=True, text=True, env=env,
                                 check=True).stdout.strip())
    import shutil

    shutil.copytree(cpu_kernels.build_dir(), target)  # the built module, as a finished build leaves it
    (target / "lock").touch()
    load = "from modelchip.runtime.backends import cpu_kernels; m, why = cpu_kernels.load(); print(m is not None, why)"
    run = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, timeout=300)
    assert run.stdout.split()[:1] == ["True"], run.stdout + run.stderr[-2000:]
