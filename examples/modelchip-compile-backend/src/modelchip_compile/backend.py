"""CompileBackend: the hot elementwise ops compiled with torch.compile, paged attention without per-head K/V
copies, bf16 linear on prepacked oneDNN weights, and everything else (embedding, MLA's batched linear, MoE,
sampling, cache writes) left to modelchip's reference backend, where modelchip counts each call."""

from __future__ import annotations

import os
import types
import warnings
from collections import Counter
from collections.abc import Callable

import torch

from modelchip_compile import attention, kernels
from modelchip_compile.linear import PackedLinear


def _fresh_copy(fn: Callable) -> Callable:
    # dynamo keeps compiled graphs, and its limit of 8 recompiles, per code object; a copy per dtype keeps
    # decode/prefill/strided variants of one dtype from pushing another dtype over the limit (where dynamo
    # would silently run the function eagerly)
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class _CompiledOp:
    """One op: its compiled kernel (one per input dtype) for inputs of at least `min_numel` elements, the same
    function run eagerly below that (a compiled call costs ~20 us of guards and dispatch, more than a small
    op's whole eager run). Once compiling fails (no C++ compiler, no Triton, an unsupported dtype...) the op
    runs eagerly for good, with a warning, and every call that should have been compiled is counted."""

    def __init__(self, name: str, fn: Callable, fallbacks: Counter, enabled: bool, min_numel: int):
        self.name, self.eager, self.fallbacks, self.enabled, self.min_numel = name, fn, fallbacks, enabled, min_numel
        self.compiled: dict[torch.dtype, Callable | None] = {}  # None: compiling failed for this dtype

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        if x.numel() < self.min_numel:
            return self.eager(x, *args, **kwargs)
        kernel = self._kernel(x.dtype)
        if kernel is not None:
            try:
                return kernel(x, *args, **kwargs)
            except Exception as exc:
                out = self.eager(x, *args, **kwargs)  # raises as well when the inputs, not the compiler, are bad
                self.compiled[x.dtype] = None
                warnings.warn(f"modelchip-compile: torch.compile failed for {self.name} in {x.dtype} "
                              f"({type(exc).__name__}: {str(exc)[:200]}); running it eagerly from now on",
                              RuntimeWarning, stacklevel=2)
                self.fallbacks[self.name] += 1
                return out
        self.fallbacks[self.name] += 1
        return self.eager(x, *args, **kwargs)

    def _kernel(self, dtype: torch.dtype) -> Callable | None:
        if not self.enabled:
            return None
        if dtype not in self.compiled:  # compiled lazily: the first call per dtype pays for compilation
            self.compiled[dtype] = torch.compile(_fresh_copy(self.eager), dynamic=True)
        return self.compiled[dtype]


class CompileBackend:
    """modelchip backend `compile`.

    Environment: MODELCHIP_COMPILE=0 turns compilation off (the compiled ops then run eagerly, each such call
    counted in `fallbacks`); MODELCHIP_COMPILE_MIN_NUMEL (default 65536) is the input size from which the
    compiled kernel is used. Paged attention never needs the compiler.
    """

    name = "compile"
    contract_version = 1

    def __init__(self, device: str | torch.device = "cpu", compile: bool | None = None, min_numel: int | None = None):
        self.device = torch.device(device)
        if compile is None:
            compile = os.environ.get("MODELCHIP_COMPILE", "1") != "0"
        if min_numel is None:
            min_numel = int(os.environ.get("MODELCHIP_COMPILE_MIN_NUMEL", 1 << 16))
        self.fallbacks: Counter[str] = Counter()  # compiled ops that ran eagerly (modelchip conformance shows it)
        kernel_ops = {"rms_norm": ("rms_norm", kernels.rms_norm),
                      "silu_and_mul": ("silu_and_mul", kernels.silu_and_mul),
                      "rotary_half": ("rotary_embedding", kernels.rotary_half),
                      "rotary_interleaved": ("rotary_embedding", kernels.rotary_interleaved)}
        self._ops = {key: _CompiledOp(op, fn, self.fallbacks, compile, min_numel)
                     for key, (op, fn) in kernel_ops.items()}
        self.linear = PackedLinear(self.device, self.fallbacks)
        self.prepare_linear = self.linear.prepare

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self._ops["rms_norm"](x, weight, eps)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self._ops["silu_and_mul"](gate_up)

    def rotary_embedding(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         interleaved: bool = False) -> torch.Tensor:
        return self._ops["rotary_interleaved" if interleaved else "rotary_half"](x, cos, sin)

    paged_attention = staticmethod(attention.paged_attention)
