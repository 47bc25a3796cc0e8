"""Attention-FFN disaggregation over torch.distributed (gloo on 127.0.0.1): attention ranks and FFN ranks of a
tiny random checkpoint must give the single-process run's logits (within float32 rounding where a side is split)
and the same greedy tokens, with the step's batch really split into micro-batches; an FFN rank that dies must end
the run with a clear error, never a hang."""

from __future__ import annotations

import pytest
import torch
from kill_worker import check_killed_rank_ends_the_run

from modelchip.conformance.tiny_checkpoint import write_checkpoint
from modelchip.conformance.tiny_models import CONFIGS
from modelchip.errors import ModelchipError
from modelchip.llm import LLM
from modelchip.runtime.backends import get_backend
from modelchip.runtime.batch import build_batch
from modelchip.runtime.distributed.afd import check_split, is_ffn_tensor, make_config, micro_batches
from modelchip.runtime.layers.ffn import GatedMLP, MoE
from modelchip.runtime.models.decoder import FAMILIES, DecoderLM, ffn_slots
from modelchip.spec import families

PROMPTS = [[1, 5, 9, 33, 2, 7, 60, 11], [3, 4], [8, 9, 10]]
# two prompts sharing a full 16-token block: with prefix caching the second reads the block the first writes in
# the same step, from the next micro-batch (the engine admits the writer first)
SHARED = [list(range(20, 36)) + [1, 2], list(range(20, 36)) + [3]]
# (family, attention ranks, FFN ranks): a dense family, Step-3 (MFA + MoE), MLA + MoE; split sides
CASES = [("llama", 1, 1), ("step3_text", 1, 1), ("deepseek_v3", 1, 1), ("mixtral", 1, 1), ("llama", 1, 2),
         ("llama", 2, 1), ("llama", 2, 2), ("step3_text", 1, 2), ("qwen3_moe", 1, 2), ("mixtral", 1, 2),
         ("deepseek_v3", 2, 1)]
FAST = {("llama", 1, 1)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("afd")
    return {f: write_checkpoint(CONFIGS[f], root / f, seed=7) for f in {c[0] for c in CASES}}


def _forward_two_sequences(llm) -> torch.Tensor:
    """One engine-style step over two sequences (so two micro-batches); logits of each one's last token."""
    cache = llm.make_cache(8, 4)
    ids, positions, meta = build_batch([PROMPTS[0], PROMPTS[1]], [0, 0], [[0, 1], [2]], 4, llm.device)
    return llm.forward_step(ids, positions, meta, torch.tensor([7, 9]), cache)


@pytest.mark.parametrize("family,attention,ffn",
                         [pytest.param(*c, marks=() if c in FAST else pytest.mark.slow) for c in CASES])
def test_afd_equals_single_process(checkpoints, family, attention, ffn):
    torch.set_num_threads(1)
    path = str(checkpoints[family])
    single = LLM(path, backend="reference", dtype="float32")
    want_logits = [single.logits(p) for p in PROMPTS]
    want_step = _forward_two_sequences(single)
    want = [g.token_ids for g in single.generate(PROMPTS + SHARED, max_tokens=6)]
    par = LLM(path, backend="reference", dtype="float32", afd=(attention, ffn))
    try:
        assert par.parallel.world_size == attention + ffn
        assert not any(isinstance(m, GatedMLP | MoE) for m in par.model.modules())  # rank 0 holds no FFN
        got_logits = [par.logits(p) for p in PROMPTS]
        before = par.afd.exchange_calls
        got_step = _forward_two_sequences(par)
        exchanges = par.afd.exchange_calls - before
        broadcasts = par.afd.from_ffn is not None
        got = [g.token_ids for g in par.generate(PROMPTS + SHARED, max_tokens=6)]
    finally:
        par.close()
    for w, g in zip(want_logits, got_logits, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_step, want_step, atol=1e-4, rtol=1e-4)
    # two micro-batches per layer, each broadcast to the FFN ranks and broadcast back once (the default
    # communicator broadcasts: its handles can be polled, gloo's point-to-point ones cannot)
    assert broadcasts
    assert exchanges == len(single.spec.layers) * 2 * 2
    assert got == want


def test_killed_ffn_rank_ends_the_run_with_an_error(checkpoints):
    torch.set_num_threads(1)
    par = LLM(str(checkpoints["llama"]), backend="reference", dtype="float32", afd=(1, 1))
    ffn_rank = par.parallel.procs[0]  # rank 1: the FFN rank
    check_killed_rank_ends_the_run(par, [[1, 2, 3], [4, 5]], ffn_rank, "attention-FFN rank 1 died")


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_every_ffn_tensor_name_goes_to_the_ffn_side(family):
    if families.text_config(CONFIGS[family])[1] not in FAMILIES:
        pytest.skip("not a runtime family")
    spec = families.read(CONFIGS[family], family)
    with torch.inference_mode():
        model = DecoderLM(get_backend("reference"), spec, torch.float32)
    ffn = set()
    for i, layer in enumerate(model.layers):
        ffn |= set(ffn_slots(layer.mlp, f"model.layers.{i}", FAMILIES[spec.family]))
    assert ffn
    assert {n for n in model.slots() if is_ffn_tensor(n)} == ffn


def test_micro_batches_split_sequences_by_tokens():
    assert micro_batches([0, 1, 2, 3, 4], 2) == [(0, 2), (2, 4)]  # decode: half the sequences each
    assert micro_batches([0, 8, 10, 13], 2) == [(0, 1), (1, 3)]  # a long prefill alone, the rest together
    assert micro_batches([0, 5], 2) == [(0, 1)]  # one sequence: one micro-batch
    assert micro_batches([0, 1, 2, 3], 5) == [(0, 1), (1, 2), (2, 3)]  # never an empty micro-batch
    assert micro_batches([0, 100, 101, 102], 3) == [(0, 1), (1, 2), (2, 3)]


def test_bad_afd_sizes_are_refused_by_name():
    with pytest.raises(ModelchipError, match="at least one attention rank and one FFN rank"):
        make_config((1, 0))
    with pytest.raises(ModelchipError, match="exclusive"):
        make_config((1, 1), tensor_parallel_size=2)
    with pytest.raises(ModelchipError, match="micro-batches"):
        make_config((1, 1), micro_batches=0)
    assert make_config(None) is None
    assert make_config((2, 3)).world_size == 5


def test_sizes_a_side_cannot_split_are_refused_by_option_and_number():
    def tiny(family):
        return families.read(CONFIGS[family], f"tiny-{family}")

    for family in ("llama", "qwen3_moe", "mixtral", "deepseek_v3", "step3_text"):
        check_split(tiny(family), make_config((2, 2)))  # what test_afd_equals_single_process runs splits
    with pytest.raises(ModelchipError, match=r"--afd-ffn-ranks 4 cannot split tiny-qwen3_moe: .*number of "
                                             r"experts \(6\)"):
        check_split(tiny("qwen3_moe"), make_config((1, 4)))
    with pytest.raises(ModelchipError, match=r"--afd-attention-ranks 3 cannot split tiny-deepseek_v3: .*attention "
                                             r"heads \(4\)"):
        check_split(tiny("deepseek_v3"), make_config((3, 1)))  # MLA splits heads evenly
    with pytest.raises(ModelchipError, match=r"--afd-ffn-ranks 3 cannot split tiny-llama: .*MLP intermediate "
                                             r"size \(64\)"):
        check_split(tiny("llama"), make_config((1, 3)))
