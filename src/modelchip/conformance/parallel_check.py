""""Parallel equals single": a tiny model run over N ranks on the vendor's backend, device and collectives,
against the same backend in one process. Logits within the family tolerance of the dtype and greedy tokens
equal. Four layouts: tensor parallel (every family), expert parallel with attention replicated,
data-parallel attention with expert-parallel MoE (the MoE families; their all-to-all dispatch and combine), and
attention-FFN disaggregation (every family; the per-layer point-to-point exchange of micro-batches)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from modelchip.conformance.family_check import FamilyResult
from modelchip.conformance.tiny_checkpoint import write_checkpoint
from modelchip.conformance.tiny_models import CONFIGS, spec
from modelchip.conformance.tolerances import LOGITS_ATOL
from modelchip.errors import ModelchipError
from modelchip.runtime.distributed import afd as afd_parallel

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


def afd_prompts(micro_batches: int) -> list[list[int]]:
    """The AFD check's batch: PROMPTS, plus short prompts up to one sequence per micro-batch (a step is split
    by sequence, so fewer sequences than micro-batches would leave the extra ones unexercised)."""
    extra = [[(7 * i + j) % 90 + 1 for j in range(2 + i % 3)] for i in range(micro_batches - len(PROMPTS))]
    return PROMPTS + extra


def check_afd_sizes(families: list[str], afd: tuple[int, int], micro_batches: int) -> afd_parallel.AFDConfig:
    """The AFD sizes, refused with the reason before any process starts: fewer than one rank a side, fewer
    than one micro-batch, or a side that cannot split one of these tiny families."""
    config = afd_parallel.make_config(afd, micro_batches)
    if not families:
        raise ModelchipError("the attention-FFN disaggregation check runs model families, and none were asked for "
                             "(drop `--families none`, or --afd)")
    refused = []
    for family in families:
        try:
            afd_parallel.check_split(spec(family), config)
        except ModelchipError as exc:
            refused.append(str(exc))
    if refused:
        raise ModelchipError(f"attention-FFN disaggregation over {config.attention_ranks} attention + "
                             f"{config.ffn_ranks} FFN ranks cannot run {len(refused)} of the families asked for: "
                             + "; ".join(refused) + " (choose other sizes or leave those families out)")
    return config


def batched_steps(llm, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Logits of two steps over the whole batch, as the engine runs them: every prompt prefilled in one step
    (each one's last row), then one decode step of a token per sequence. A one-prompt `logits()` call is one
    sequence, so only steps like these split into micro-batches (AFD) or spread sequences over ranks (DP)."""
    from modelchip.runtime.batch import build_batch

    block, tables, used = 4, [], 0
    for p in prompts:
        n = -(-(len(p) + 1) // block)
        tables.append(list(range(used, used + n)))
        used += n
    cache = llm.make_cache(used, block)
    ids, positions, meta = build_batch(prompts, [0] * len(prompts), tables, block, llm.device)
    last = (meta.query_start_loc_cpu[1:] - 1).to(llm.device)
    prefill = llm.forward_step(ids, positions, meta, last, cache)
    ids, positions, meta = build_batch([[p[0]] for p in prompts], [len(p) for p in prompts], tables, block,
                                       llm.device)
    decode = llm.forward_step(ids, positions, meta, torch.arange(len(prompts), device=llm.device), cache)
    return [prefill, decode]


def check_parallel(backend: str, device: str, family: str, dtype: torch.dtype, size: int,
                   layout: str = "tp") -> FamilyResult:
    name = f"{family} " + "+".join(f"{part}{size}" for part in layout.split("+"))
    return _against_one_process(backend, device, family, dtype, name, sizes_of(layout, size), PROMPTS)


def check_afd(backend: str, device: str, family: str, dtype: torch.dtype, config: afd_parallel.AFDConfig
              ) -> FamilyResult:
    """The family over A attention + F FFN ranks, each step split into the config's micro-batches."""
    a, f, m = config.attention_ranks, config.ffn_ranks, config.micro_batches
    return _against_one_process(backend, device, family, dtype, f"{family} afd{a}+{f} mb{m}",
                                {"afd": (a, f), "afd_micro_batches": m}, afd_prompts(m))


def _against_one_process(backend: str, device: str, family: str, dtype: torch.dtype, name: str, sizes: dict,
                         prompts: list[list[int]]) -> FamilyResult:
    from modelchip.llm import LLM

    start = time.perf_counter()
    atol = LOGITS_ATOL[dtype]
    dt = str(dtype).removeprefix("torch.")
    total = len(prompts) * NEW_TOKENS
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_checkpoint(CONFIGS[family], Path(tmp) / family, seed=3))
        try:
            single = LLM(path, backend=backend, device=device, dtype=dtype)
            want = [single.logits(p) for p in prompts] + batched_steps(single, prompts)
            want_ids = [g.token_ids for g in single.generate(prompts, max_tokens=NEW_TOKENS)]
            par = LLM(path, backend=backend, device=device, dtype=dtype, **sizes)
            try:
                got = [x.to(w.device) for x, w in zip([par.logits(p) for p in prompts]
                                                      + batched_steps(par, prompts), want, strict=True)]
                got_ids = [g.token_ids for g in par.generate(prompts, max_tokens=NEW_TOKENS)]
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
