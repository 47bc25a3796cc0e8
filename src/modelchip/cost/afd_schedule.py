"""The attention-FFN disaggregated decode step played out as the runtime runs it (runtime/distributed/afd.py),
on ranks that share one device: each side computes faster while the other side waits than while both compute.

Micro-batch i of layer l starts its attention once the attention side is free and micro-batch i's FFN output of
layer l-1 is back; its FFN starts once the FFN side is free and its hidden states have arrived. A job (one
micro-batch of one layer on one side) is `host` seconds of host work plus `compute` seconds of compute at the
rate each rank has when every rank computes at once. While the other side is idle its compute runs `solo`
times faster (calibrate's `rank_compute` solo ratio: one rank alone against every rank at once), so a job alone takes
host + compute / solo and a job that overlaps the other side all along takes host + compute; in between, it
progresses at the rate of whichever holds at each moment (an event simulation of the two sides)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    host: float  # seconds of host work (op dispatch, the side's own collectives): not sped up alone
    compute: float  # seconds of compute with every rank computing at once

    def seconds(self, solo: float, alone: bool) -> float:
        return self.host + (self.compute / solo if alone else self.compute)


@dataclass(frozen=True)
class Schedule:
    end: float  # seconds from the step's start until the last FFN output is back on the attention side
    attention_busy: float  # seconds the attention side spent on its jobs


def play(layers: int, micro_batches: int, attention: Job, ffn: Job, out: float, back: float,
         solo_attention: float = 1.0, solo_ffn: float = 1.0) -> Schedule:
    """The step's `layers` x `micro_batches` jobs on each side, with `out` seconds from an attention job's end
    to its hidden states on the FFN side and `back` from an FFN job's end to its output on the attention side.
    With solo factors of 1 this is the plain schedule: a layer costs its slower side when the micro-batches keep
    both busy, the round trip attention, wire, FFN, wire when they cannot."""
    if layers < 1 or micro_batches < 1:
        raise ValueError(f"an AFD schedule needs at least one layer and one micro-batch, got {layers} and "
                         f"{micro_batches}")
    if min(solo_attention, solo_ffn) < 1.0:
        raise ValueError("a side computing alone is at least as fast as with the other beside it (solo >= 1)")
    m = micro_batches
    jobs = (attention, ffn)
    solo = (solo_attention, solo_ffn)
    n = layers * m  # jobs per side, in order: layer by layer, micro-batch by micro-batch
    done = [0, 0]  # jobs finished per side
    left = [1.0, 1.0]  # fraction of the current job still to run
    running = [False, False]
    ready = [[0.0] * m + [math.inf] * (n - m), [math.inf] * n]  # when each job's input is there
    t = busy = 0.0
    end = 0.0
    while done[0] < n or done[1] < n:
        for s in (0, 1):
            running[s] = done[s] < n and ready[s][done[s]] <= t
        both = running[0] and running[1]
        rate = [1.0 / jobs[s].seconds(solo[s], alone=not both) if running[s] else 0.0 for s in (0, 1)]
        finish = [t + left[s] / rate[s] if running[s] else math.inf for s in (0, 1)]
        arrive = [ready[s][done[s]] if done[s] < n and not running[s] else math.inf for s in (0, 1)]
        nxt = min(*finish, *arrive)
        if math.isinf(nxt):
            raise RuntimeError("AFD schedule stalled")  # unreachable: every job's input follows a finished job
        for s in (0, 1):
            if running[s]:
                left[s] -= (nxt - t) * rate[s]
        busy += (nxt - t) if running[0] else 0.0
        t = nxt
        for s in (0, 1):
            if running[s] and finish[s] <= t:
                j = done[s]
                done[s], left[s] = j + 1, 1.0
                if s == 0:
                    ready[1][j] = t + out
                elif j + m < n:
                    ready[0][j + m] = t + back
                else:
                    end = max(end, t + back)
    return Schedule(max(end, t), busy)
