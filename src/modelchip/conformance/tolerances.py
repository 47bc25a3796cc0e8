"""How close is close enough: dtype-aware tolerances for op checks and end-to-end model checks.

An op output passes when every element satisfies |out - ref| <= atol + rtol * |ref|, with ref computed in
float64 from the same (already rounded) inputs, so input rounding is never counted as the backend's error.

rtol is the dtype's resolution (the values FlagGems uses): float32 1.3e-6, bfloat16 1.6e-2 (about two bf16
ulps), float16 1e-3 (about one fp16 ulp). A purely relative bound would reject correct kernels wherever the
output is a small difference of large terms (a dot product near zero, a rotation, a weighted sum of experts),
so atol scales with the output's own magnitude: atol = ATOL_K[op] * rtol * max|ref|. ATOL_K is the number of
roundings of intermediate values an honest implementation may make at that scale (one per rounded
intermediate, plus slack for reduction order). The reference backend uses at most 0.14 of the allowed error
on any case of the grid (fp16 silu_and_mul; most cases use under 0.05), leaving room for kernels that round
in other places, while a wrong epsilon, a missing scale or a wrong rotary layout fails by orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RTOL: dict[torch.dtype, float] = {torch.float32: 1.3e-6, torch.bfloat16: 1.6e-2, torch.float16: 1e-3}

ATOL_K: dict[str, float] = {
    "linear": 4.0,  # one rounding of the output, plus reduction order
    "batched_linear": 4.0,
    "rms_norm": 4.0,  # computed in fp32, rounded once; the weight multiply may round once more
    "rotary_embedding": 4.0,  # cos/sin and both products may be rounded to the activation dtype
    "silu_and_mul": 4.0,  # silu(gate) rounded, then the product
    "paged_attention": 4.0,  # fp32 softmax; q, k, v already rounded; output rounded once
    "moe_experts": 8.0,  # gate_up, silu*up and down each rounded, then a weighted sum over top_k
    "moe_route": 4.0,  # weights are float32 whatever the activations
}

# End-to-end logits of a tiny 2-layer model vs the reference backend in the same dtype and weights: absolute,
# since tiny-model logits have a fixed scale (std about 2). In bf16/fp16 two correct backends differ by the
# different places they round activations: the example compile backend (fp32 rotary and silu, fused
# attention) differs from the reference by at most 0.094 in bf16 and 0.012 in fp16 over the seven families.
LOGITS_ATOL: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.bfloat16: 0.25, torch.float16: 0.04}

# Router choices and greedy picks may differ only between candidates whose scores tie within this.
TIE_TOL = 1e-5


@dataclass(frozen=True)
class Closeness:
    max_abs_err: float
    ratio: float  # worst |err| / allowed over elements; <= 1 passes
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0

    def describe(self) -> str:
        return f"atol {self.atol:.2g}, rtol {self.rtol:.2g}"


def closeness(out: torch.Tensor, ref: torch.Tensor, op: str, dtype: torch.dtype,
              allowance: torch.Tensor | float = 0.0) -> Closeness:
    """Compare a backend output with its float64 reference (both on CPU) under the tolerance for op/dtype,
    plus a per-element `allowance` (quantized linear: what the format's activation quantization may add)."""
    rtol = RTOL[dtype]
    ref = ref.double()
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    atol = max(ATOL_K[op] * rtol * scale, 1e-30)
    err = (out.double() - ref).abs()
    if not bool(torch.isfinite(out.double()).all()):
        return Closeness(float("inf"), float("inf"), atol, rtol)
    max_err = float(err.max()) if err.numel() else 0.0
    ratio = float((err / (atol + rtol * ref.abs() + allowance)).max()) if err.numel() else 0.0
    return Closeness(max_err, ratio, atol, rtol)


def exactness(out: torch.Tensor, ref: torch.Tensor) -> Closeness:
    """Bit-exact comparison (gathers and copies must not change a value)."""
    err = (out.double() - ref.double()).abs()
    max_err = float(err.nan_to_num(float("inf")).max()) if err.numel() else 0.0
    return Closeness(max_err, 0.0 if max_err == 0 else float("inf"), 0.0, 0.0)
