"""Contract v2's synchronize(): calibration never reads the clock while work it queued may still be running.

A backend whose synchronize() is counted, a torch function mode that notes every torch call, and a clock that
notes every reading: each reading of the clock must come after a synchronize() that follows the last torch
call, so every timed region (and every warm-up) is closed by one. On an asynchronous device, a reading without
it would time the queueing of work, not the work."""

import time

import pytest

torch = pytest.importorskip("torch")

from torch.overrides import TorchFunctionMode  # noqa: E402

from modelchip.calibrate import harness, microbench  # noqa: E402
from modelchip.runtime import backends  # noqa: E402
from modelchip.runtime.backends.reference import ReferenceBackend  # noqa: E402


class Events(TorchFunctionMode):
    """The last thing that happened (torch work or a synchronize), and the clock readings that came after
    work with no synchronize in between."""

    def __init__(self):
        super().__init__()
        self.last, self.syncs, self.readings, self.unsynced = None, 0, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.last = "work"
        return func(*args, **(kwargs or {}))

    def sync(self) -> None:
        self.last = "sync"
        self.syncs += 1

    def clock(self, real):
        def read() -> float:
            self.readings += 1
            if self.last == "work":
                import traceback

                self.unsynced.append(traceback.extract_stack(limit=2)[0].line)
            return real()

        return read


@pytest.fixture
def events(monkeypatch):
    ev = Events()

    class CountingSync(ReferenceBackend):
        name = "counting-sync"

        def synchronize(self) -> None:
            ev.sync()

    monkeypatch.setitem(backends.BUILTIN, CountingSync.name, CountingSync)
    monkeypatch.setattr(time, "perf_counter", ev.clock(time.perf_counter))
    # one attempt per timing and short budgets: what is checked is where the clock is read, not the numbers
    monkeypatch.setattr(microbench, "MAX_SPREAD", 100.0)
    monkeypatch.setattr(microbench, "WARMUP_S", 0.0)
    return ev, backends.get_backend(CountingSync.name)


def test_every_microbenchmark_timing_is_closed_by_synchronize(events):
    ev, ops = events
    with ev:
        microbench.gemm(ops, 4, 64, 32, torch.float32)
        microbench.weight_streaming(ops, 64, 32, torch.float32, pool_bytes=64 << 10)
        microbench.read_bandwidth(ops.device, nbytes=1 << 16, sync=ops.synchronize)
        microbench.op_overhead(ops, width=128)
        microbench.moe_expert_overhead(ops)
        microbench.op_overhead_cold(ops, width=128, calls=2)
        microbench.attention_decode(ops, 2, 32)
    assert ev.readings > 50 and ev.syncs > 50
    assert ev.unsynced == []


def test_every_decode_step_timing_is_closed_by_synchronize(events):
    ev, ops = events
    toy = harness.tiny_model(ops)
    steps = 4
    h = harness.DecodeHarness(toy, 2, 8, harness.steps_needed(steps) + harness.WARMUP_STEPS + steps)
    h.prefill()
    with ev:
        h.time_decode(steps)
        harness.time_interleaved({"a": h}, steps)
    assert ev.syncs >= 4 * steps  # at least one before and one after each timed step
    assert ev.unsynced == []


def test_the_check_sees_a_timing_without_synchronize(events):
    ev, ops = events
    x = torch.ones(8)
    with ev:
        ops.synchronize()
        t = time.perf_counter()
        x.sum()
        time.perf_counter() - t  # work still in flight on an asynchronous device
    assert len(ev.unsynced) == 1


def test_every_bench_round_timing_is_closed_by_synchronize(events, monkeypatch):
    from types import SimpleNamespace

    from modelchip.calibrate import loop

    ev, ops = events
    toy = harness.tiny_model(ops)
    monkeypatch.setattr(loop, "_llm", lambda *a, **k: SimpleNamespace(model=toy))
    with ev:
        out = loop.measure_rounds("toy", [1, 2], 8, 4, rounds=2)
    assert set(out) == {1, 2} and all(r.rounds == 2 for r in out.values())
    assert ev.syncs >= 2 * 2 * 2 * 2  # batches x rounds x steps per round, before and after each
    assert ev.unsynced == []
