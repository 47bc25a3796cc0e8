"""The cpu backend's packed Q8_0/Q4_0/Q4_1 matmul (cpu_linear_quant.cpp), every copy this CPU runs (AVX512-VNNI,
AVX2, plain C++), against float64 math on the gguf package's own quantization and dequantization:

- tightly, against the same per-32-block int8 activation quantization done here in numpy (the kernels' only
  approximation besides float32 accumulation), and
- loosely, against unquantized activations, within the bound that rounding each activation to half its
  block's step implies;

plus every byte pattern of the formats (random blocks, Q8_0's -128), each row's result independent of its batch
and of the copy that ran it, bad arguments refused, and the backend's dispatch and counted fallbacks."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType, quants  # noqa: E402

from modelchip.errors import ModelchipError  # noqa: E402
from modelchip.runtime.quant import GGUF_BLOCKS, QuantizedWeight  # noqa: E402

FORMATS = ("q8_0", "q4_0", "q4_1")
ISAS = ("avx512_vnni", "avx2", "baseline")


@pytest.fixture(params=ISAS)
def qk(request, kernels):
    """The kernels, running the quantized matmul's copy for this instruction set (restored after)."""
    best = kernels.best_quant_isa
    if ISAS.index(request.param) < ISAS.index(best):
        pytest.skip(f"this CPU runs {best} at most")
    kernels.set_quant_isa(request.param)
    yield kernels
    kernels.set_quant_isa(best)


def _qtype(fmt):
    return GGMLQuantizationType[fmt.upper()]


def _weight(fmt, n, k, rng):
    data = quants.quantize((rng.standard_normal((n, k)) / 4).astype(np.float32), _qtype(fmt))
    return data, quants.dequantize(data, _qtype(fmt)).astype(np.float64)


def _random_blocks(fmt, n, k, rng):
    """Every byte pattern a file may hold: random quants (Q8_0's -128 and 127, every nibble), finite scales."""
    per_block, nbytes = GGUF_BLOCKS[fmt]
    data = rng.integers(0, 256, size=(n, k // per_block, nbytes), dtype=np.uint8)
    scales = 2 if fmt != "q4_1" else 4
    data[:, :, :scales] = (rng.standard_normal((n, k // per_block, scales // 2)) / 64).astype(np.float16).view(
        np.uint8).reshape(n, k // per_block, scales)
    data = data.reshape(n, -1)
    return data, quants.dequantize(data, _qtype(fmt)).astype(np.float64)


def _quantized_activations(x):
    """llama.cpp's q8_0 activation quantization in float32 numpy (d = amax / 127, q = round(x / d), ties to
    even): float64 values and each block's step."""
    blocks = x.astype(np.float32).reshape(x.shape[0], x.shape[1] // 32, 32)
    d = np.abs(blocks).max(-1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.rint(blocks * inv)
    return (q * d.astype(np.float64)).reshape(x.shape), d[..., 0].astype(np.float64)


def _magnitude(fmt, data, w):
    """|weight| as the kernel's terms see it: Q4_1's d * q and its min are summed separately, so they count
    separately here (|d| q + |m| bounds both)."""
    if fmt != "q4_1":
        return np.abs(w)
    blocks = data.reshape(data.shape[0], -1, 20)
    d = blocks[:, :, 0:2].copy().view(np.float16).astype(np.float64)
    m = blocks[:, :, 2:4].copy().view(np.float16).astype(np.float64)
    q = (w.reshape(w.shape[0], -1, 32) - m) / np.where(d == 0, 1, d)
    return (np.abs(d) * np.abs(q) + np.abs(m)).reshape(w.shape)


def _check(got, x, data, w, fmt, bias, dtype):
    xq, step = _quantized_activations(x)
    b = 0 if bias is None else bias.astype(np.float64)
    exact = xq @ w.T + b
    size = np.abs(xq) @ _magnitude(fmt, data, w).T + np.abs(b)
    nb = x.shape[1] // 32
    # float32: each block's scale product and FMA round once (2^-24 each), nb blocks summed
    slack = size * (nb + 2) * 2.0 ** -23 + 1e-30
    if dtype == torch.bfloat16:
        slack = slack + np.abs(exact) * 2.0 ** -8
    g = got.double().numpy()
    assert (np.abs(g - exact) <= slack).all(), np.abs(g - exact).max()
    # unquantized activations: each is off by at most half its block's step
    full = x.astype(np.float64) @ w.T + b
    per_block = _magnitude(fmt, data, w).reshape(w.shape[0], nb, 32).sum(-1)  # [n, nb]
    bound = (step / 2) @ per_block.T * 1.001 + slack
    assert (np.abs(g - full) <= bound).all()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("n", "k"), [(16, 32), (37, 64), (100, 1536), (200, 576)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_float64_on_gguf_blocks(qk, fmt, n, k, dtype):
    rng = np.random.default_rng(n * 7 + k + len(fmt))
    data, w = _weight(fmt, n, k, rng)
    packed = qk.prepare_linear_quant(torch.from_numpy(data), fmt, n, k)
    for rows in (0, 1, 2, 3, 4, 5, 9, 16):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).to(dtype)
        bias = rng.standard_normal(n).astype(np.float32) if rows % 2 else None
        got = qk.linear_quant(x, packed, fmt, n, None if bias is None else torch.from_numpy(bias))
        assert got.dtype == dtype and got.shape == (rows, n)
        _check(got, x.float().numpy(), data, w, fmt, bias, dtype)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_byte_pattern(qk, fmt):
    rng = np.random.default_rng(3)
    data, w = _random_blocks(fmt, 48, 256, rng)
    x = rng.standard_normal((6, 256)).astype(np.float32) * 3
    x[0, :32] = 0  # an all-zero block: step 0
    got = qk.linear_quant(torch.from_numpy(x), qk.prepare_linear_quant(torch.from_numpy(data), fmt, 48, 256), fmt, 48)
    _check(got, x, data, w, fmt, None, torch.float32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_alone_in_any_batch_and_on_every_copy(kernels, fmt, dtype):
    # the engine's greedy outputs must not change with who else is in the batch, nor with the CPU's vectors
    rng = np.random.default_rng(5)
    data, _ = _weight(fmt, 300, 576, rng)
    packed = kernels.prepare_linear_quant(torch.from_numpy(data), fmt, 300, 576)
    x = torch.randn(23, 576, generator=torch.Generator().manual_seed(1)).to(dtype)
    best, results = kernels.best_quant_isa, []
    try:
        for isa in ISAS[ISAS.index(best):]:
            kernels.set_quant_isa(isa)
            together = kernels.linear_quant(x, packed, fmt, 300)
            for i in (0, 3, 4, 22):
                assert torch.equal(together[i:i + 1], kernels.linear_quant(x[i:i + 1], packed, fmt, 300))
            results.append(together)
    finally:
        kernels.set_quant_isa(best)
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_activation_gives_nan_not_a_number(qk, fmt, bad):
    # float math gives NaN or infinity there; an int8 scale cannot hold it, and a finite result would hide it
    rng = np.random.default_rng(6)
    data, w = _weight(fmt, 32, 128, rng)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    x[1, 70] = bad
    packed = qk.prepare_linear_quant(torch.from_numpy(data), fmt, 32, 128)
    for dtype in (torch.float32, torch.bfloat16):
        xt = torch.from_numpy(x).to(dtype)
        got = qk.linear_quant(xt, packed, fmt, 32)
        assert got[1].isnan().all()
        _check(got[[0, 2]], xt.float().numpy()[[0, 2]], data, w, fmt, None, dtype)


def test_bad_arguments_are_refused(kernels):
    rng = np.random.default_rng(0)
    data = torch.from_numpy(_weight("q8_0", 40, 64, rng)[0])
    with pytest.raises(RuntimeError, match="no kernel for format 'q4_k'"):
        kernels.prepare_linear_quant(data, "q4_k", 40, 64)
    with pytest.raises(RuntimeError, match="takes \\[40, 68\\]"):
        kernels.prepare_linear_quant(data[:, :34], "q8_0", 40, 64)
    with pytest.raises(RuntimeError, match="takes"):
        kernels.prepare_linear_quant(data, "q4_0", 40, 64)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernels.prepare_linear_quant(data, "q8_0", 40, 48)
    with pytest.raises(RuntimeError, match="uint8"):
        kernels.prepare_linear_quant(data.float(), "q8_0", 40, 64)
    packed = kernels.prepare_linear_quant(data, "q8_0", 40, 64)
    x = torch.randn(3, 64)
    with pytest.raises(RuntimeError, match="x has 32 input features"):
        kernels.linear_quant(x[:, :32], packed, "q8_0", 40)
    with pytest.raises(RuntimeError, match="outputs do not match"):
        kernels.linear_quant(x, packed, "q8_0", 64)
    with pytest.raises(RuntimeError, match="must come from prepare_linear_quant for q4_0"):
        kernels.linear_quant(x, packed, "q4_0", 40)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernels.linear_quant(x.half(), packed, "q8_0", 40)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernels.linear_quant(x[None], packed, "q8_0", 40)
    with pytest.raises(RuntimeError, match="bias has 3 elements"):
        kernels.linear_quant(x, packed, "q8_0", 40, torch.zeros(3))
    with pytest.raises(RuntimeError, match="choose avx512_vnni, avx2 or baseline"):
        kernels.set_quant_isa("amx")


# ---- the backend: packed handles for the three formats, everything else dequantized once and counted ----

def _backend():
    from modelchip.runtime.backends.cpu import CPUBackend

    return CPUBackend()


@pytest.mark.parametrize("fmt", FORMATS)
def test_backend_runs_kernel_formats_packed(kernels, fmt):
    from modelchip.runtime.backends.cpu_quant import QuantLinear

    backend = _backend()
    rng = np.random.default_rng(1)
    data, w = _weight(fmt, 64, 128, rng)
    handle = backend.prepare_linear(QuantizedWeight(fmt, torch.from_numpy(data), 64, 128))
    assert isinstance(handle, QuantLinear) and not backend.fallbacks
    x = torch.randn(2, 3, 128)
    for dtype in (torch.float32, torch.bfloat16):
        got = backend.linear(x.to(dtype), handle)
        assert got.dtype == dtype and got.shape == (2, 3, 64)
        _check(got.reshape(6, 64), x.to(dtype).float().reshape(6, 128).numpy(), data, w, fmt, None, dtype)
    half = backend.linear(x.half(), handle)  # no float16 copy: through float32, counted
    assert half.dtype == torch.float16 and sum(backend.fallbacks.values()) == 1


def _q4_k_blocks(n, k, rng):
    data = rng.integers(0, 256, size=(n, k // 256, 144), dtype=np.uint8)
    data[:, :, :4] = (rng.random((n, k // 256, 2)) / 256).astype(np.float16).view(np.uint8).reshape(n, -1, 4)
    return data.reshape(n, -1)


def test_backend_dequantizes_other_formats_once_and_counts(kernels):
    backend = _backend()
    rng = np.random.default_rng(2)
    q4k = _q4_k_blocks(32, 256, rng)
    codes = torch.from_numpy(rng.integers(-127, 128, size=(24, 64), dtype=np.int8))
    scales = torch.rand(24) / 100
    fp8 = (torch.randn(20, 48) * 4).to(torch.float8_e4m3fn)
    fp8_scales = torch.rand(3, 2) + 0.5
    cases = [
        (QuantizedWeight("q4_k", torch.from_numpy(q4k), 32, 256),
         quants.dequantize(q4k, GGMLQuantizationType.Q4_K).astype(np.float64)),
        (QuantizedWeight("int8_channel", codes, 24, 64, scales=scales),
         codes.double().numpy() * scales.double().numpy()[:, None]),
        (QuantizedWeight("fp8_block", fp8, 20, 48, scales=fp8_scales, block_shape=(8, 32)),
         fp8.double().numpy() * np.repeat(np.repeat(fp8_scales.double().numpy(), 8, 0), 32, 1)[:20, :48]),
    ]
    for weight, w in cases:
        handle = backend.prepare_linear(weight)
        x = torch.randn(3, weight.in_features)
        got = backend.linear(x, handle).double().numpy()
        exact = x.double().numpy() @ w.T
        assert np.allclose(got, exact, rtol=1e-4, atol=1e-5 * np.abs(exact).max())
        assert backend.linear(x, handle).shape == (3, weight.out_features)
    assert sorted(backend.fallbacks) == [
        "linear: fp8_block weight dequantized at prepare to float32 (no fp8_block kernel)",
        "linear: int8_channel weight dequantized at prepare to float32 (no int8_channel kernel)",
        "linear: q4_k weight dequantized at prepare to float32 (no q4_k kernel)"]


def test_backend_without_kernels_dequantizes_and_says_why(kernels):
    backend = _backend()
    backend.kernels, backend.kernels_missing = None, "fused kernels off (MODELCHIP_CPU_KERNELS=0)"
    rng = np.random.default_rng(4)
    data, w = _weight("q4_1", 32, 64, rng)
    handle = backend.prepare_linear(QuantizedWeight("q4_1", torch.from_numpy(data), 32, 64))
    x = torch.randn(2, 64)
    assert np.allclose(backend.linear(x, handle).double().numpy(), x.double().numpy() @ w.T, rtol=1e-4, atol=1e-4)
    assert list(backend.fallbacks) == ["linear: q4_1 weight dequantized at prepare to float32 (cpu kernels not built)"]


def test_backend_takes_the_copy_the_environment_names(kernels, monkeypatch):
    best = kernels.best_quant_isa
    try:
        monkeypatch.setenv("MODELCHIP_QUANT_ISA", "baseline")
        _backend()
        assert kernels.quant_isa() == "baseline"
        monkeypatch.setenv("MODELCHIP_QUANT_ISA", "sse9")
        with pytest.raises(ModelchipError, match="MODELCHIP_QUANT_ISA='sse9': set_quant_isa: unknown"):
            _backend()
    finally:
        kernels.set_quant_isa(best)


def test_backend_refuses_a_weight_that_does_not_fit_its_format(kernels):
    # QuantizedWeight checks its layout when made (runtime/quant.py), before any backend sees it
    with pytest.raises(ModelchipError, match=r"\(q6_k\): data must be uint8 \[4, 210\]"):
        QuantizedWeight("q6_k", torch.zeros(4, 200, dtype=torch.uint8), 4, 256)
    with pytest.raises(ModelchipError, match=r"\(q8_0\): data must be uint8 \[4, 68\]"):
        QuantizedWeight("q8_0", torch.zeros(4, 60, dtype=torch.uint8), 4, 64)
    with pytest.raises(ModelchipError, match="int8_channel"):
        QuantizedWeight("int8_channel", torch.zeros(4, 8, dtype=torch.int8), 4, 8, scales=torch.ones(3))
