"""The cpu backend's blocked float32 matmul (cpu_linear_f32.cpp) against float64 products, per instruction-set
copy: ragged widths, bias, every row-tile remainder and the split-rows path; every copy giving the same bits;
each row's result independent of its batch; shapes that do not fit refused; and the backend's choice of it."""

import pytest

torch = pytest.importorskip("torch")

from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime.backends import cpu  # noqa: E402
from modelchip.runtime.backends.cpu import CPUBackend, PackedLinear  # noqa: E402

ISAS = ("avx512", "avx2", "baseline")


@pytest.fixture(params=ISAS)
def fk(request, kernels):
    """The kernels, running the float32 matmul's copy for this instruction set (restored after)."""
    best = kernels.best_f32_isa
    if ISAS.index(request.param) < ISAS.index(best):
        pytest.skip(f"this CPU runs {best} at most")
    kernels.set_f32_isa(request.param)
    yield kernels
    kernels.set_f32_isa(best)


def _case(n, k, rows, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) / 4, torch.randn(rows, k, generator=g), torch.randn(n, generator=g)


def _within_f32_accumulation(got, w, x, bias):
    exact = x.double() @ w.double().T + (0 if bias is None else bias.double())
    # a chain of k fused multiply-adds in float32: each rounding at most 2^-24 of the running sum's size
    size = x.double().abs() @ w.double().abs().T + (0 if bias is None else bias.double().abs())
    slack = size * (x.shape[1] + 1) * 2.0 ** -24 + 1e-30
    return bool(((got.double() - exact).abs() <= slack).all())


@pytest.mark.parametrize(("n", "k"), [(96, 64), (37, 51), (16, 2), (1, 1), (200, 33), (64, 1536)])
@pytest.mark.parametrize("rows", [0, 1, 5, 6, 7, 13, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_product(n, k, rows, with_bias, fk):
    w, x, b = _case(n, k, rows, seed=n * 1000 + k + rows)
    bias = b if with_bias else None
    got = fk.linear_f32(x, fk.pack_linear_f32(w), n, bias)
    assert got.dtype == torch.float32 and got.shape == (rows, n)
    assert _within_f32_accumulation(got, w, x, bias)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, bias), rtol=1e-4, atol=1e-4)


def test_every_copy_gives_the_same_bits(kernels):
    # one fused multiply-add chain per output in every copy (the plain one through std::fma)
    w, x, b = _case(300, 576, 9, seed=5)
    blocked = kernels.pack_linear_f32(w)
    best, results = kernels.best_f32_isa, []
    try:
        for isa in ISAS[ISAS.index(best):]:
            kernels.set_f32_isa(isa)
            results.append(kernels.linear_f32(x, blocked, 300, b))
    finally:
        kernels.set_f32_isa(best)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_a_rows_result_does_not_depend_on_its_batch(fk):
    # the engine's greedy outputs must not change with who else is in the batch
    w, x, _ = _case(300, 576, 23, seed=1)
    blocked = fk.pack_linear_f32(w)
    together = fk.linear_f32(x, blocked, 300)
    for i in (0, 5, 6, 22):
        assert torch.equal(together[i:i + 1], fk.linear_f32(x[i:i + 1], blocked, 300))


def test_shapes_that_do_not_fit_are_refused(kernels):
    w, x, _ = _case(40, 64, 3, seed=2)
    blocked = kernels.pack_linear_f32(w)
    with pytest.raises(RuntimeError, match="input features"):
        kernels.linear_f32(x[:, :32], blocked, 40)
    with pytest.raises(RuntimeError, match="outputs do not match"):
        kernels.linear_f32(x, blocked, 64)
    with pytest.raises(RuntimeError, match="bias has 3 elements"):
        kernels.linear_f32(x, blocked, 40, torch.zeros(3))
    with pytest.raises(RuntimeError, match="float32"):
        kernels.linear_f32(x.bfloat16(), blocked, 40)
    with pytest.raises(RuntimeError, match="pack_linear_f32"):
        kernels.linear_f32(x, w, 40)
    with pytest.raises(RuntimeError, match="2-D float32"):
        kernels.pack_linear_f32(w.double())
    with pytest.raises(RuntimeError, match="unknown instruction set"):
        kernels.set_f32_isa("sse9")


def test_backend_lays_f32_weights_out_in_blocks_and_keeps_leading_dims(kernels, monkeypatch):
    monkeypatch.setenv("MODELCHIP_F32_MATMUL", "blocks")
    backend = CPUBackend()
    w, x, b = _case(48, 40, 6, seed=3)
    handle = backend.prepare_linear(w)
    assert isinstance(handle, PackedLinear) and handle.layout == "f32-blocks"
    got = backend.linear(x.view(2, 3, 40), handle, b)
    assert got.shape == (2, 3, 48)
    assert _within_f32_accumulation(got.view(6, 48), w, x, b)
    assert not backend.fallbacks
    monkeypatch.setenv("MODELCHIP_F32_MATMUL", "onednn")
    assert CPUBackend().prepare_linear(w).layout == "onednn"


@pytest.mark.parametrize(("has_blocks", "best", "forced", "want"), [
    (True, "avx512", "", "f32-blocks"),
    (True, "avx2", "", "f32-blocks"),  # measured on a Zen 3: 1.1-1.6x oneDNN at 1-256 rows
    (True, "baseline", "", "onednn"),  # the plain C++ copy: oneDNN stays the default
    (False, None, "", "onednn"),
    (True, "avx2", "blocks", "f32-blocks"),
    (True, "avx512", "onednn", "onednn"),
])
def test_f32_matmul_choice(monkeypatch, has_blocks, best, forced, want):
    class Kernels:
        best_f32_isa = best

        def linear_f32(self):
            pass

    monkeypatch.setenv("MODELCHIP_F32_MATMUL", forced)
    assert cpu.f32_matmul(Kernels if has_blocks else None) == want


def test_f32_matmul_override_refuses_what_cannot_run(monkeypatch):
    monkeypatch.setenv("MODELCHIP_F32_MATMUL", "blocks")
    with pytest.raises(ModelchipError, match="not built here"):
        cpu.f32_matmul(None)
    monkeypatch.setenv("MODELCHIP_F32_MATMUL", "fast")
    with pytest.raises(ModelchipError, match="choose blocks or onednn"):
        cpu.f32_matmul(None)


def test_large_packed_weights_start_on_a_2mb_boundary_and_compute_the_same(kernels):
    import sys

    big = kernels.pack_linear_f32(torch.randn(3072, 576))  # 7 MB: copied into memory advised for huge pages
    small = kernels.pack_linear_f32(torch.randn(64, 64))  # 16 KB: left where torch put it
    if sys.platform.startswith("linux"):
        assert big.data_ptr() % (2 << 20) == 0
    x = torch.randn(5, 576)
    assert torch.equal(kernels.linear_f32(x, big, 3072, None), kernels.linear_f32(x, big.clone(), 3072, None))
    assert small.shape == (4, 64, 16)
    del big  # its deleter unmaps the mapping
