"""End-to-end check of one model family in one dtype: the backend's logits and greedy tokens against the
reference backend on CPU running the same weights in the same dtype.

Same dtype, not float32: expert routing is discrete, so in bf16 a router near-tie that rounding resolves the
other way changes the logits by O(1) with no op wrong; against float32 that happens often, against the
reference in the same dtype only when the backend rounds very differently."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from modelchip.conformance import drive, tiny_models
from modelchip.conformance.tolerances import LOGITS_ATOL
from modelchip.runtime.backends import get_backend


@dataclass
class FamilyResult:
    family: str
    dtype: str
    passed: bool
    max_abs_err: float | None
    tolerance: float
    tokens_matched: int
    tokens_total: int
    ties: int  # greedy picks that differ from the reference's only between near-tied logits
    detail: str
    seconds: float
    fused: bool = False  # the backend ran the layers as its own stack (contract: fuse_decoder_layers)


_REFERENCE: dict[tuple[str, torch.dtype], drive.Trace] = {}


def reference_trace(family: str, dtype: torch.dtype) -> drive.Trace:
    """The reference backend's run on CPU (cached: it never changes within a process)."""
    key = (family, dtype)
    if key not in _REFERENCE:
        ops = get_backend("reference", "cpu")
        _REFERENCE[key] = drive.run(tiny_models.build(ops, family, tiny_models.random_state(family), dtype), ops)
    return _REFERENCE[key]


def check_family(ops, family: str, dtype: torch.dtype) -> FamilyResult:
    start = time.perf_counter()
    atol = LOGITS_ATOL[dtype]
    name = str(dtype).removeprefix("torch.")
    total = len(drive.PROMPTS) * drive.NEW_TOKENS
    ref = reference_trace(family, dtype)
    try:
        model = tiny_models.build(ops, family, tiny_models.random_state(family), dtype)
        fused = model.fused_stack is not None
        got = drive.run(model, ops, forced=ref.picks)
    except Exception as exc:  # a crash fails this family, not the whole run
        return FamilyResult(family, name, False, None, atol, 0, total, 0,
                            f"raised {type(exc).__name__}: {str(exc)[:300]}", time.perf_counter() - start)
    problems = []
    shapes = [tuple(a.shape) for a in got.logits] == [tuple(b.shape) for b in ref.logits]
    dtypes = all(a.dtype == torch.float32 for a in got.logits)
    if not (shapes and dtypes):
        problems.append("logits must be float32 with one row per new token")
        err = float("inf")
    else:
        err = max(float((a.double() - b.double()).abs().max()) for a, b in zip(got.logits, ref.logits, strict=True))
        if not err <= atol:  # also catches NaN
            problems.append(f"logits max abs error {err:.3g} > {atol:g}")
    matched = ties = 0
    for s in range(len(drive.PROMPTS)):
        for i, (mine, theirs) in enumerate(zip(got.picks[s], ref.picks[s], strict=True)):
            row = ref.pick_logits[s][i]
            if mine == theirs:
                matched += 1
            elif 0 <= mine < row.numel() and float(row[mine]) >= float(row.max()) - 2 * atol:
                ties += 1  # within the logits tolerance of the reference's pick: either is right
            elif len(problems) < 3:
                problems.append(f"sequence {s} step {i}: greedy token {mine}, reference {theirs}")
    return FamilyResult(family, name, not problems, err, atol, matched, total, ties, "; ".join(problems),
                        time.perf_counter() - start, fused)
