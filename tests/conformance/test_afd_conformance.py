"""The kit's attention-FFN disaggregation check: "AFD equals one process" passes the reference and cpu
backends on gloo, fails backends whose communicator reorders or rounds the micro-batches it carries, and
`modelchip conformance --afd` refuses sizes it cannot run before starting anything."""

import pytest
from broken_backends import Bf16Wire, LIFOReceives

from modelchip.cli.main import build_parser, main
from modelchip.conformance import markdown, run
from modelchip.conformance.parallel_check import afd_prompts
from modelchip.runtime.backends import available


@pytest.mark.slow  # spawns an FFN rank per family and backend
@pytest.mark.parametrize("backend,dtype,afd", [("reference", "float32", (1, 2)), ("cpu", "bfloat16", (1, 1))])
def test_afd_equals_one_process_on_gloo(backend, dtype, afd):
    # a dense family and a MoE one; (1, 2) splits the MLP and the experts over two FFN ranks
    report = run(backend, dtypes=[dtype], ops=[], families=["llama", "mixtral"], afd=afd)
    assert report.passed, report.failures
    a, f = afd
    assert [c.family for c in report.families] == ["llama", "mixtral", f"llama afd{a}+{f} mb2",
                                                   f"mixtral afd{a}+{f} mb2"]
    for check in report.families[2:]:
        assert check.tokens_matched == check.tokens_total == 2 * 6
    assert f"| llama afd{a}+{f} mb2 | {dtype} |" in markdown(report)


@pytest.mark.slow  # spawns an FFN rank twice per backend
@pytest.mark.parametrize("broken,found,control", [
    # a decode step splits into micro-batches of one token each, whose FFN outputs the wrong receive order swaps;
    # with one micro-batch a step there is nothing to reorder
    (LIFOReceives, ["logits max abs error", "greedy tokens"], {"dtypes": ["float32"], "afd_micro_batches": 1}),
    # float32 activations rounded to bfloat16 on the wire: every logit is off, though no greedy token moves;
    # a bfloat16 run loses nothing to it
    (Bf16Wire, ["logits max abs error"], {"dtypes": ["bfloat16"]}),
])
def test_a_communicator_that_corrupts_micro_batches_fails(installed, broken, found, control):
    (name,) = installed(broken)
    assert name in available()
    report = run(name, dtypes=["float32"], ops=[], families=["llama"], afd=(1, 1))
    single, afd = report.families
    assert single.passed, single.detail  # one process never sends: the ops are the reference's
    assert afd.family == "llama afd1+1 mb2" and not afd.passed
    assert all(what in afd.detail for what in found) and "raised" not in afd.detail  # wrong numbers, no crash
    assert afd.max_abs_err > 10 * afd.tolerance
    assert report.failures == [f"family llama afd1+1 mb2 float32: {afd.detail}"]
    # the same backend where its bug cannot show passes: the check fails the bug, not the backend
    assert run(name, ops=[], families=["llama"], afd=(1, 1), **control).passed


def test_more_micro_batches_than_prompts_get_a_sequence_each():
    assert len(afd_prompts(2)) == 2
    prompts = afd_prompts(5)
    assert len(prompts) == 5 and prompts[:2] == afd_prompts(2) and all(prompts)


def _refused(capsys, *args) -> str:
    assert main(["conformance", "--backend", "reference", "--dtype", "float32", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before anything ran: no card
    return err


def test_bad_afd_input_is_refused_by_name(capsys):
    err = _refused(capsys, "--afd", "0", "1", "--families", "llama")
    assert "at least one attention rank and one FFN rank, got 0 attention and 1 FFN ranks" in err
    err = _refused(capsys, "--afd", "1", "1", "--afd-micro-batches", "0", "--families", "llama")
    assert "micro-batches must be at least 1, got 0" in err
    err = _refused(capsys, "--afd-micro-batches", "3", "--families", "llama")
    assert "give --afd A F too" in err
    err = _refused(capsys, "--afd", "1", "1", "--families", "none")
    assert "none were asked for" in err


def test_sizes_a_family_cannot_split_are_refused_before_anything_runs(capsys):
    # the tiny qwen3_moe has 6 experts, llama 4 query heads over 2 K/V heads
    err = _refused(capsys, "--afd", "1", "4", "--families", "llama", "qwen3_moe")
    assert "--afd-ffn-ranks 4 cannot split tiny-qwen3_moe" in err and "number of experts (6)" in err
    assert "tiny-llama" not in err  # its MLP width 64 splits over 4
    err = _refused(capsys, "--afd", "3", "1", "--families", "llama")
    assert "--afd-attention-ranks 3 cannot split tiny-llama" in err and "number of attention heads (4)" in err


def test_afd_option_is_documented_and_takes_two_sizes(capsys):
    text = build_parser()._subparsers._group_actions[0].choices["conformance"].format_help()
    assert "--afd A F" in text and "--afd-micro-batches M" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["conformance", "--backend", "reference", "--afd", "1"])
    assert exit_info.value.code == 2
    assert "--afd: expected 2 arguments" in capsys.readouterr().err


def test_ops_none_leaves_the_model_and_parallel_checks(capsys):
    assert main(["conformance", "--backend", "reference", "--dtype", "float32", "--ops", "none", "--families",
                 "none", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ops": []' in out and '"families": []' in out
