"""The cpu backend's pair-blocked bfloat16 matmul (cpu_linear_bf16.cpp) against float64 products, through
vdpbf16ps and, on AMX CPUs, through AMX tiles: ragged widths (input pairs past the last whole tile), bias, every
row-tile remainder and the split-rows path; each row's result independent of the batch it came in; shapes that
do not fit refused; and the backend choosing it, or oneDNN and saying why."""

import pytest

torch = pytest.importorskip("torch")

from modelchip.runtime.backends.cpu import CPUBackend, PackedLinear  # noqa: E402

needs_bf16 = pytest.mark.usefixtures("bf16_kernels")  # built once per session on first use, not at collection


@pytest.fixture(params=["vdpbf16ps", "amx"])
def path(request, bf16_kernels):
    """Each way the pair blocks can run on this CPU (AMX tiles only where it has them), restored after."""
    if request.param == "amx" and not bf16_kernels.has_linear_bf16_amx:
        pytest.skip("this CPU has no AMX tiles")
    before = bf16_kernels.linear_bf16_amx()
    bf16_kernels.set_linear_bf16_amx(request.param == "amx")
    yield request.param
    bf16_kernels.set_linear_bf16_amx(before)


def _case(n, k, rows, seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / 4).bfloat16()
    x = torch.randn(rows, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16()
    return w, x, b


def _within_bf16_rounding(got, w, x, bias):
    exact = x.double() @ w.double().T + (0 if bias is None else bias.double())
    # one rounding to bfloat16 (half an ulp: 2^-9 relative) plus float32 accumulation of the products
    size = x.double().abs() @ w.double().abs().T
    slack = exact.abs() * 2.0 ** -8 + size * 1e-6 + 1e-30
    return bool(((got.double() - exact).abs() <= slack).all())


@needs_bf16
@pytest.mark.parametrize(("n", "k"), [(96, 64), (37, 51), (16, 2), (1, 1), (200, 33), (64, 1536), (72, 100)])
@pytest.mark.parametrize("rows", [0, 1, 5, 6, 7, 13, 16, 17, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_product(n, k, rows, with_bias, bf16_kernels, path):
    w, x, b = _case(n, k, rows, seed=n * 1000 + k + rows)
    bias = b if with_bias else None
    got = bf16_kernels.linear_bf16(x, bf16_kernels.pack_linear_bf16(w), n, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
    assert _within_bf16_rounding(got, w, x, bias)


@needs_bf16
@pytest.mark.parametrize("k", [576, 600])  # 600: 12 input pairs past the last whole AMX tile
def test_a_rows_result_does_not_depend_on_its_batch(bf16_kernels, path, k):
    # the engine's greedy outputs must not change with who else is in the batch
    w, x, b = _case(300, k, 37, seed=1)
    blocked = bf16_kernels.pack_linear_bf16(w)
    together = bf16_kernels.linear_bf16(x, blocked, 300, b)
    for i in (0, 5, 6, 15, 16, 22, 36):
        assert torch.equal(together[i:i + 1], bf16_kernels.linear_bf16(x[i:i + 1], blocked, 300, b))
    assert torch.equal(together[16:33], bf16_kernels.linear_bf16(x[16:33], blocked, 300, b))


@needs_bf16
def test_shapes_that_do_not_fit_are_refused(bf16_kernels):
    w, x, _ = _case(40, 64, 3, seed=2)
    blocked = bf16_kernels.pack_linear_bf16(w)
    with pytest.raises(RuntimeError, match="input features"):
        bf16_kernels.linear_bf16(x[:, :32], blocked, 40)
    with pytest.raises(RuntimeError, match="outputs do not match"):
        bf16_kernels.linear_bf16(x, blocked, 64)
    with pytest.raises(RuntimeError, match="bias has 3 elements"):
        bf16_kernels.linear_bf16(x, blocked, 40, torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="bfloat16"):
        bf16_kernels.linear_bf16(x.float(), blocked, 40)


@needs_bf16
def test_backend_lays_bf16_weights_out_in_pairs_and_keeps_leading_dims():
    backend = CPUBackend()
    w, x, b = _case(48, 40, 6, seed=3)
    handle = backend.prepare_linear(w)
    assert isinstance(handle, PackedLinear) and handle.layout == "bf16-pairs" and backend.bf16_linear == "bf16-pairs"
    got = backend.linear(x.view(2, 3, 40), handle, b)
    assert got.shape == (2, 3, 48)
    assert _within_bf16_rounding(got.view(6, 48), w, x, b)
    assert backend.prepare_linear(w.float()).layout == ("f32-blocks" if backend.f32_linear == "f32-blocks"
                                                        else "onednn")  # float32: its own choice
    assert not backend.fallbacks


def test_without_kernels_bf16_goes_to_onednn_and_is_counted():
    backend = CPUBackend()
    backend.kernels, backend.kernels_missing, backend.bf16_linear = None, "kernels off for this test", "onednn"
    w, x, _ = _case(32, 16, 2, seed=4)
    handle = backend.prepare_linear(w)
    if torch.bfloat16 not in backend.pack_dtypes:
        pytest.skip("this CPU's oneDNN has no bfloat16 matmul")
    assert handle.layout == "onednn"
    assert _within_bf16_rounding(backend.linear(x, handle), w, x, None)
    assert backend.fallbacks["bfloat16 linear weight on oneDNN (kernels off for this test)"] == 1
