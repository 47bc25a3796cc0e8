"""The AFD step schedule (cost/afd_schedule.py) against hand-played timelines and the plain recurrence."""

import random

import pytest

from modelchip.cost.afd_schedule import Job, play


def _recurrence(layers, m, a, f, out, back):
    """The schedule with no solo speedup, as the runtime orders it: micro-batch i of layer l starts its
    attention once the attention side is free and its FFN output of layer l-1 is back; its FFN once the FFN
    side is free and its hidden states have arrived."""
    attn_free = ffn_free = 0.0
    returned = [0.0] * m
    for _ in range(layers):
        for i in range(m):
            attn_free = max(attn_free, returned[i]) + a
            ffn_free = max(ffn_free, attn_free + out) + f
            returned[i] = ffn_free + back
    return max(attn_free, max(returned))


def test_without_solo_speedup_it_is_the_plain_recurrence():
    rng = random.Random(0)
    for _ in range(200):
        layers, m = rng.randint(1, 6), rng.randint(1, 4)
        attention = Job(rng.uniform(0, 1e-4), rng.uniform(0, 1e-3))
        ffn = Job(rng.uniform(0, 1e-4), rng.uniform(0, 1e-3))
        out, back = rng.uniform(0, 3e-4), rng.uniform(0, 3e-4)
        s = play(layers, m, attention, ffn, out, back)
        a, f = attention.host + attention.compute, ffn.host + ffn.compute
        assert s.end == pytest.approx(_recurrence(layers, m, a, f, out, back), rel=1e-12)
        assert s.attention_busy == pytest.approx(layers * m * a, rel=1e-12)


def test_one_micro_batch_runs_every_job_alone():
    # nothing overlaps: each layer is attention, wire, FFN, wire, each side's compute at its solo rate
    s = play(3, 1, Job(1e-5, 4e-4), Job(2e-5, 6e-4), 5e-5, 7e-5, solo_attention=1.25, solo_ffn=1.5)
    layer = 1e-5 + 4e-4 / 1.25 + 5e-5 + 2e-5 + 6e-4 / 1.5 + 7e-5
    assert s.end == pytest.approx(3 * layer, rel=1e-12)
    assert s.attention_busy == pytest.approx(3 * (1e-5 + 4e-4 / 1.25), rel=1e-12)


def test_overlapping_jobs_run_at_the_shared_rate_while_both_sides_compute():
    # one layer, two micro-batches, instant wires, 1 s of compute per job, twice as fast alone: A0 alone from 0
    # to 0.5; A1 and F0 both from 0.5, at the shared rate, to 1.5; F1 alone from 1.5 to 2.0
    s = play(1, 2, Job(0.0, 1.0), Job(0.0, 1.0), 0.0, 0.0, solo_attention=2.0, solo_ffn=2.0)
    assert s.end == pytest.approx(2.0, rel=1e-12)
    assert s.attention_busy == pytest.approx(1.5, rel=1e-12)
    # a job that starts alone and is joined part way: FFN jobs of 2 s, a wire of 0.25 s to the FFN side
    s = play(1, 2, Job(0.0, 1.0), Job(0.0, 2.0), 0.25, 0.0, solo_attention=2.0, solo_ffn=2.0)
    # A0: 0 -> 0.5 alone. A1 from 0.5, alone until F0 is ready at 0.75 (0.25 s at rate 2: half of it), then with
    # F0 at rate 1: done at 1.25. F0 from 0.75: 0.5 s shared (a quarter of its 2 s), then alone at rate 1/1 s: its
    # remaining three quarters take 0.75 s, done at 2.0. F1 ready at 1.5 (A1's end + 0.25), waits for F0: alone
    # from 2.0, 1 s. The step ends at 3.0
    assert s.end == pytest.approx(3.0, rel=1e-12)
    assert s.attention_busy == pytest.approx(1.25, rel=1e-12)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="at least one layer"):
        play(0, 1, Job(0, 1), Job(0, 1), 0, 0)
    with pytest.raises(ValueError, match="solo >= 1"):
        play(1, 1, Job(0, 1), Job(0, 1), 0, 0, solo_attention=0.9)
