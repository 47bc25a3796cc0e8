""""Parallel equals single": a tiny model run over N ranks on the vendor's backend, device and collectives,
against the same backend in one process. Logits within the family tolerance of the dtype and greedy tokens
equal. Three layouts: tensor parallel (every family), expert parallel with attention replicated, and
data-parallel attention with expert-parallel MoE (the MoE families; their all-to-all dispatch and combine)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from modelchip.conformance.family_check import FamilyResult
from modelchip.conformance.tiny_checkpoint import write_checkpoint
from modelchip.conformance.tiny_models import CONFIGS, spec
from modelchip.conformance.tolerances import LOGITS_ATOL

LAYOUTS = ("tp", "ep", "dp+ep")
PROMPTS = [[1, 5, 9, 33, 2, 7, 60, 11], [3, 4]]
NEW_TOKENS = 6


def sizes_of(layout: str, size: int) -> dict:
    """LLM keywords of a layout over `size` ranks."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown parallel layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    return {"tp": {"tensor_parallel_size": size}, "ep": {"expert_parallel_size": size},
            "dp+ep": {"data_parallel_size": size, "expert_parallel_size": size}}[layout]


def applies(family: str, layout: str, size: int) -> bool:
    """Whether `layout` over `size` ranks splits this tiny family (EP layouts: MoE families whose expert count
    the size divides)."""
    if layout == "tp":
        return True
    experts = [layer.ffn.num_experts for layer in spec(family).layers if layer.ffn.kind == "moe"]
    return bool(experts) and experts[0] % size == 0


def check_parallel(backend: str, device: str, family: str, dtype: torch.dtype, size: int,
                   layout: str = "tp") -> FamilyResult:
    from modelchip.llm import LLM

    start = time.perf_counter()
    atol = LOGITS_ATOL[dtype]
    name = f"{family} " + "+".join(f"{part}{size}" for part in layout.split("+"))
    dt = str(dtype).removeprefix("torch.")
    total = len(PROMPTS) * NEW_TOKENS
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_checkpoint(CONFIGS[family], Path(tmp) / family, seed=3))
        try:
            single = LLM(path, backend=backend, device=device, dtype=dtype)
            want = [single.logits(p) for p in PROMPTS]
            want_ids = [g.token_ids for g in single.generate(PROMPTS, max_tokens=NEW_TOKENS)]
            par = LLM(path, backend=backend, device=device, dtype=dtype, **sizes_of(layout, size))
            try:
                got = [par.logits(p).to(w.device) for p, w in zip(PROMPTS, want, strict=True)]
                got_ids = [g.token_ids for g in par.generate(PROMPTS, max_tokens=NEW_TOKENS)]
            finally:
                par.close()
        except Exception as exc:  # a crash fails this check, not the whole run
            return FamilyResult(name, dt, False, None, atol, 0, total, 0,
                                f"raised {type(exc).__name__}: {str(exc)[:300]}", time.perf_counter() - start)
    err = max(float((a.double() - b.double()).abs().max()) for a, b in zip(got, want, strict=True))
    problems = [] if err <= atol else [f"logits max abs error {err:.3g} > {atol:g} against one process"]
    matched = sum(a == b for g, w in zip(got_ids, want_ids, strict=True) for a, b in zip(g, w, strict=False))
    if got_ids != want_ids:
        problems.append(f"greedy tokens {got_ids} differ from one process's {want_ids}")
    return FamilyResult(name, dt, not problems, err, atol, matched, total, 0, "; ".join(problems),
                        time.perf_counter() - start)
