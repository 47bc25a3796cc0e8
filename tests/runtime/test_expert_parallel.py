"""Expert parallelism and data-parallel attention with expert-parallel MoE over torch.distributed (gloo on
127.0.0.1), for the tiny random checkpoints of every MoE family: the parallel run's logits must equal the
single-process run's within float32 rounding, and its greedy tokens must be the same. Bad sizes are refused
naming the number that does not work."""

from __future__ import annotations

import pytest
import torch

from modelchip.conformance.tiny_checkpoint import write_checkpoint
from modelchip.conformance.tiny_models import CONFIGS
from modelchip.errors import ModelchipError
from modelchip.llm import LLM
from modelchip.runtime.batch import build_batch
from modelchip.runtime.distributed import data_parallel
from modelchip.runtime.distributed.expert_parallel import expert_range
from modelchip.runtime.distributed.layout import ParallelLayout, make_layout
from modelchip.runtime.distributed.tensor_parallel import check_family
from modelchip.spec import families

FAMILIES = ("mixtral", "qwen3_moe", "deepseek_v3", "step3_text")  # experts: 4, 6, 8, 6
# three prompts so data-parallel ranks get different numbers of sequences (and one-shot logits leave rank 1 idle)
PROMPTS = [[1, 5, 9, 33, 2, 7, 60, 11], [3, 4], [8, 9, 10, 12]]
EP2 = {"expert_parallel_size": 2}
DP2 = {"expert_parallel_size": 2, "data_parallel_size": 2}
TP2_EP2 = {"expert_parallel_size": 2, "tensor_parallel_size": 2}

CASES = [
    ("mixtral", EP2, False),  # attention replicated; each rank dispatches its half of the tokens
    ("deepseek_v3", EP2, True),  # MLA, sigmoid group routing, shared experts, a dense first layer
    ("qwen3_moe", EP2, True),
    ("step3_text", EP2, True),  # MFA, experts fused in the checkpoint: each rank reads its slice
    ("mixtral", DP2, False),
    ("deepseek_v3", DP2, True),
    ("qwen3_moe", DP2, True),
    ("step3_text", DP2, True),
    ("qwen3_moe", TP2_EP2, True),  # GQA attention tensor parallel, experts sharded over the same ranks
    ("deepseek_v3", TP2_EP2, True),  # MLA tensor parallel; shared experts split by TP, routed ones by EP
    ("mixtral", {"expert_parallel_size": 4}, True),
    ("deepseek_v3", {"expert_parallel_size": 4, "data_parallel_size": 4}, True),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ep")
    return {family: write_checkpoint(CONFIGS[family], root / family, seed=7) for family in FAMILIES}


def single_and_parallel(path, **sizes):
    torch.set_num_threads(1)
    single = LLM(str(path), backend="reference", dtype="float32")
    want_logits = [single.logits(p) for p in PROMPTS]
    want = [g.token_ids for g in single.generate(PROMPTS, max_tokens=6)]
    par = LLM(str(path), backend="reference", dtype="float32", **sizes)
    try:
        got_logits = [par.logits(p) for p in PROMPTS]
        got = [g.token_ids for g in par.generate(PROMPTS, max_tokens=6)]
        calls = par.ops.comm.calls
    finally:
        par.close()
    return want_logits, want, got_logits, got, calls


def _id(case) -> str:
    family, sizes, _ = case
    short = {"expert_parallel_size": "ep", "data_parallel_size": "dp", "tensor_parallel_size": "tp"}
    return family + "-" + "-".join(f"{short[k]}{v}" for k, v in sizes.items())


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c[2] else c for c in CASES], ids=_id)
def test_parallel_equals_single_process(checkpoints, case):
    family, sizes, _ = case
    want_logits, want, got_logits, got, calls = single_and_parallel(checkpoints[family], **sizes)
    for w, g in zip(want_logits, got_logits, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert got == want
    assert calls > 0  # tokens really travelled between ranks


def test_bad_sizes_are_refused_naming_the_number():
    with pytest.raises(ModelchipError, match=r"does not divide the number of experts \(6\)"):
        expert_range(6, 0, 4)
    assert expert_range(8, 3, 4) == (6, 8)
    with pytest.raises(ModelchipError, match="data parallel size 2 needs expert parallel size 2"):
        make_layout(data_parallel_size=2)
    with pytest.raises(ModelchipError, match="expert parallel size 2 with tensor parallel size 4"):
        make_layout(tensor_parallel_size=4, expert_parallel_size=2)
    with pytest.raises(ModelchipError, match="tensor parallel size 2 with data parallel size 2"):
        make_layout(tensor_parallel_size=2, data_parallel_size=2, expert_parallel_size=2)
    with pytest.raises(ModelchipError, match="expert_parallel_size must be a whole number of at least 1, got 0"):
        make_layout(expert_parallel_size=0)
    assert make_layout(expert_parallel_size=3).world_size == 3
    with pytest.raises(ModelchipError, match="'llama' has no MoE layer"):
        check_family(families.read(CONFIGS["llama"], "llama"), ParallelLayout(expert_parallel_size=2))


@pytest.mark.slow
def test_experts_not_dividing_end_the_load_with_an_error(checkpoints):
    # qwen3_moe has 6 experts: 4 ranks cannot each hold a whole share; every rank refuses while loading
    with pytest.raises(ModelchipError, match=r"expert parallel size 4 does not divide the number of experts \(6\)"):
        LLM(str(checkpoints["qwen3_moe"]), backend="reference", dtype="float32", expert_parallel_size=4)


def test_data_parallel_split_follows_first_blocks():
    # sequences with first blocks 0, 1, 2 over 2 ranks: rank 0 holds sequences 0 and 2, rank 1 sequence 1
    ids, positions, meta = build_batch([[5, 6, 7], [8, 9], [10]], [0, 0, 0], [[0], [1], [2]], 4, torch.device("cpu"))
    last = torch.tensor([2, 4, 5])  # each sequence's last token
    zero = data_parallel.local_batch(ids, positions, meta, last, 0, 2)
    one = data_parallel.local_batch(ids, positions, meta, last, 1, 2)
    assert zero.ids.tolist() == [5, 6, 7, 10] and one.ids.tolist() == [8, 9]
    assert zero.meta.query_start_loc.tolist() == [0, 3, 4] and one.meta.query_start_loc.tolist() == [0, 2]
    assert zero.meta.slot_mapping.tolist() == meta.slot_mapping[[0, 1, 2, 5]].tolist()
    assert zero.last.tolist() == [2, 3] and one.last.tolist() == [1]
    assert zero.owner == [0, 1, 0] and zero.slot == [0, 0, 1]
