"""Tensor parallelism over torch.distributed (gloo on 127.0.0.1): the parallel run of a tiny random checkpoint
of every family (dense GQA, MoE, MLA, MFA) must give the single-process run's logits (within float32 rounding of
a different summation order) and the same greedy tokens; a worker that dies must end the run with a clear
error, never a hang."""

from __future__ import annotations

import pytest
import torch
from kill_worker import check_killed_rank_ends_the_run

from modelchip.conformance.tiny_checkpoint import write_checkpoint
from modelchip.conformance.tiny_models import CONFIGS
from modelchip.errors import ModelchipError
from modelchip.llm import LLM
from modelchip.runtime.distributed.layout import make_layout
from modelchip.runtime.distributed.tensor_parallel import check_family, split_heads, vocab_rows
from modelchip.spec import families

LLAMA = CONFIGS["llama"]  # 4 query heads, 2 K/V heads, vocab 96, width 64
VARIANTS = {
    "llama": LLAMA,
    # MQA under TP 2: the one K/V head replicated; tied embeddings; vocabulary 97 (the last rank padded)
    "mqa_tied_odd_vocab": {**LLAMA, "num_key_value_heads": 1, "tie_word_embeddings": True, "vocab_size": 97},
    "qwen2_qkv_bias": CONFIGS["qwen2"],
    "qwen3_qk_norm": CONFIGS["qwen3"],
    "llama_biases": {**LLAMA, "attention_bias": True, "mlp_bias": True},  # row-parallel o_proj/down biases
    # MoE: every expert's width split, the router replicated; qwen3_moe's first layer is dense
    "qwen3_moe": CONFIGS["qwen3_moe"],
    "mixtral": CONFIGS["mixtral"],
    # MLA by head (latent replicated), shared experts split, o_proj bias on rank 0 only
    "deepseek_v3": CONFIGS["deepseek_v3"],
    "deepseek_v3_biases": {**CONFIGS["deepseek_v3"], "attention_bias": True},
    "kimi_k2_no_q_lora": {**CONFIGS["deepseek_v3"], "model_type": "kimi_k2", "q_lora_rank": None},
    # MFA: low-rank q replicated, wq by head, the one shared K/V head replicated; experts fused in the file
    "step3_text": CONFIGS["step3_text"],
}
SLOW = {"qwen2_qkv_bias", "qwen3_qk_norm", "llama_biases", "qwen3_moe", "mixtral", "deepseek_v3",
        "deepseek_v3_biases", "kimi_k2_no_q_lora", "step3_text"}
PROMPTS = [[1, 5, 9, 33, 2, 7, 60, 11], [3, 4]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    return {name: write_checkpoint(config, root / name, seed=7) for name, config in VARIANTS.items()}


def _single_and_parallel(path, tp: int):
    torch.set_num_threads(1)
    single = LLM(str(path), backend="reference", dtype="float32")
    want_logits = [single.logits(p) for p in PROMPTS]
    want = [g.token_ids for g in single.generate(PROMPTS, max_tokens=6)]
    par = LLM(str(path), backend="reference", dtype="float32", tensor_parallel_size=tp)
    try:
        got_logits = [par.logits(p) for p in PROMPTS]
        got = [g.token_ids for g in par.generate(PROMPTS, max_tokens=6)]
        comm = par.ops.comm
        calls = comm.calls
    finally:
        par.close()
    return want_logits, want, got_logits, got, calls


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v in SLOW else v for v in VARIANTS])
def test_tensor_parallel_equals_single_process(checkpoints, variant):
    want_logits, want, got_logits, got, calls = _single_and_parallel(checkpoints[variant], 2)
    for w, g in zip(want_logits, got_logits, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert got == want
    assert calls > 0  # the ranks really exchanged partial sums


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["llama", "deepseek_v3", "step3_text"])
def test_four_ranks(checkpoints, variant):
    # llama: 4 ranks over 2 K/V heads, each K/V head on two ranks; MLA one head per rank; MFA's K/V head on all
    want_logits, want, got_logits, got, _ = _single_and_parallel(checkpoints[variant], 4)
    for w, g in zip(want_logits, got_logits, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert got == want


def test_killed_worker_ends_the_run_with_an_error(checkpoints):
    torch.set_num_threads(1)
    par = LLM(str(checkpoints["llama"]), backend="reference", dtype="float32", tensor_parallel_size=2)
    worker = par.parallel.procs[0]
    check_killed_rank_ends_the_run(par, [[1, 2, 3]], worker, "rank 1 died")


def test_heads_split_and_replicate():
    s = split_heads(8, 4, 1, 2)
    assert (s.heads, s.q_start, s.kv_heads, s.kv_start) == (4, 4, 2, 2)
    s = split_heads(8, 2, 3, 4)  # fewer K/V heads than ranks: ranks 2 and 3 share K/V head 1
    assert (s.heads, s.q_start, s.kv_heads, s.kv_start) == (2, 6, 1, 1)
    with pytest.raises(ModelchipError, match="does not divide the number of attention heads"):
        split_heads(9, 3, 0, 2)  # SmolLM2-135M's 9 heads over 2 ranks
    with pytest.raises(ModelchipError, match="not a multiple"):
        split_heads(12, 4, 0, 6)
    assert vocab_rows(97, 1, 2) == (49, 97, 49)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "step3_text", "llama"])
def test_every_family_splits_under_tensor_parallelism(family):
    check_family(families.read(CONFIGS[family], family), make_layout(tensor_parallel_size=2))


def test_each_rank_on_a_machine_gets_its_own_accelerator():
    from modelchip.runtime.distributed.launch import rank_device

    assert rank_device("cpu", 3) == torch.device("cpu")  # CPU ranks share the CPU
    assert rank_device("cuda:2", 1) == torch.device("cuda", 3)
    assert rank_device("xpu", 0) == torch.device("xpu")


@pytest.mark.slow
def test_conformance_parallel_equals_single():
    from modelchip.conformance import run

    report = run("reference", "cpu", ["float32"], ops=[], families=["llama", "mixtral"], tensor_parallel=2,
                 expert_parallel=2)
    parallel = [f for f in report.families if f.family.endswith("p2")]
    # expert parallel layouts only for the MoE family
    assert [f.family for f in parallel] == ["llama tp2", "mixtral tp2", "mixtral ep2", "mixtral dp2+ep2"]
    for check in parallel:
        assert check.passed, check.detail
        assert check.tokens_matched == check.tokens_total
