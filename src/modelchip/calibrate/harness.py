"""A decode loop over a DecoderLM, the way a serving step runs one: build the batch's metadata on the host,
run the model through the paged cache, take the last logits, sample. Used to time real decode steps and to
measure the fixed host cost of a step on a model too small to cost anything else."""

from __future__ import annotations

import statistics
import time

import torch

from modelchip.calibrate import microbench
from modelchip.runtime.kv_cache import KVCache
from modelchip.spec import families

WARMUP_STEPS = 3


def steps_needed(timed: int) -> int:
    """Decode steps `time_decode(timed)` or `time_interleaved(..., timed)` may run: warm-up plus every attempt
    (the cache must hold them)."""
    return WARMUP_STEPS + timed * microbench.ATTEMPTS


class DecodeHarness:
    def __init__(self, model, batch: int, context: int, steps: int, block_size: int = 16, seed: int = 0):
        self.model, self.ops, self.bs = model, model.ops, block_size
        self.dtype = model.dtype
        capacity = context + steps + 1
        per_seq = -(-capacity // block_size)
        # an odd block count per sequence spreads the sequences' first blocks, and so (data_parallel.owners) a
        # data-parallel run's sequences, evenly over 2 or 4 ranks
        per_seq += 1 - per_seq % 2
        self.cache = self._make_cache(batch * per_seq)
        gen = torch.Generator().manual_seed(seed)
        vocab = model.spec.vocab_size
        self.tokens = [torch.randint(0, vocab, (context,), generator=gen).tolist() for _ in range(batch)]
        self.blocks = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
        n = batch
        dev = model.device
        self.params = (torch.zeros(n, device=dev), torch.ones(n, device=dev), torch.zeros(n, dtype=torch.long,
                                                                                          device=dev))

    def _make_cache(self, num_blocks: int) -> KVCache:
        return KVCache(self.model.ops, self.model.cache_layouts(), num_blocks, self.bs, self.model.dtype)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, meta, last: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model(ids, pos, meta, self.cache.layers)[last])

    def _run(self, new: int) -> None:
        from modelchip.runtime.batch import build_batch

        batch = [toks[-new:] for toks in self.tokens]
        ids, pos, meta = build_batch(batch, [len(t) - new for t in self.tokens], self.blocks, self.bs,
                                     self.model.device)
        picked = self.ops.sample(self._forward(ids, pos, meta, meta.query_start_loc[1:] - 1), *self.params).tolist()
        for toks, t in zip(self.tokens, picked, strict=True):
            toks.append(int(t))

    @torch.inference_mode()
    def prefill(self) -> None:
        self._run(len(self.tokens[0]))

    @torch.inference_mode()
    def time_decode(self, steps: int, name: str | None = None) -> float:
        """Median seconds of a decode step over `steps` steps, each timed alone after three warm-up steps, so
        a step slowed by other work on the machine moves the result no more than an ordinary one; steps that
        spread too far are timed again (microbench.steady_samples). The cache must hold the extra steps."""
        for _ in range(WARMUP_STEPS):
            self._run(1)
        sync = self.ops.synchronize  # every timing starts and ends with the device idle (contract v2)
        sync()

        def take() -> list[float]:
            times = []
            for _ in range(steps):
                sync()
                t = time.perf_counter()
                self._run(1)
                sync()
                times.append(time.perf_counter() - t)
            return times

        return microbench.steady_samples(take, name).seconds


class EngineHarness(DecodeHarness):
    """The same decode loop through a LoadedModel's engine path (`make_cache`, `forward_step`), so the ranks of a
    parallel run step together (rank 0 broadcasts each step's inputs), and the seconds each step spends inside
    the communicator's collectives are kept (`comm_per_step`, median over the timed steps)."""

    def __init__(self, loaded, batch: int, context: int, steps: int, seed: int = 0):
        self.loaded = loaded
        self.comm_log: list[float] = []
        self.comm_per_step = 0.0
        super().__init__(loaded.model, batch, context, steps, loaded.block_size, seed)

    def _make_cache(self, num_blocks: int) -> KVCache:
        return self.loaded.make_cache(num_blocks, self.bs)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, meta, last: torch.Tensor) -> torch.Tensor:
        before = self._comm_seconds()
        logits = self.loaded.forward_step(ids, pos, meta, last, self.cache)
        self.comm_log.append(self._comm_seconds() - before)
        return logits

    def _comm_seconds(self) -> float:
        """Rank 0's seconds in the model's collectives and in broadcasting step inputs (and, under attention-FFN
        disaggregation, waiting for the FFN ranks' outputs), so far."""
        run, afd = self.loaded.parallel, getattr(self.loaded, "afd", None)
        return (self.ops.comm.seconds + (run.publish_seconds if run is not None else 0.0)
                + (afd.seconds if afd is not None else 0.0))  # AFD: waiting for the FFN ranks' outputs

    def time_decode(self, steps: int, name: str | None = None) -> float:
        self.comm_log = []
        seconds = super().time_decode(steps, name)
        self.comm_per_step = statistics.median(self.comm_log[WARMUP_STEPS:])
        return seconds


@torch.inference_mode()
def time_interleaved(harnesses: dict, steps: int) -> dict:
    """Median seconds of a decode step of each harness, their steps taken in turn (one of each, `steps`
    times), so load that comes and goes on the machine falls on all of them alike and differences between
    them (what the calibration derives per-op and per-sequence costs from) stay steady. Timed again while any
    of them spreads too far (microbench.MAX_SPREAD, within RETRY_BUDGET_S), keeping the steadiest attempt;
    each is logged by its key."""
    for h in harnesses.values():
        for _ in range(WARMUP_STEPS):
            h._run(1)
        h.ops.synchronize()
    best: tuple | None = None
    start = time.perf_counter()
    for attempt in range(1, microbench.ATTEMPTS + 1):
        times: dict = {key: [] for key in harnesses}
        for _ in range(steps):
            for key, h in harnesses.items():
                h.ops.synchronize()
                t = time.perf_counter()
                h._run(1)
                h.ops.synchronize()
                times[key].append(time.perf_counter() - t)
        worst = max(microbench.spread(v) for v in times.values())
        if best is None or worst < best[0]:
            best = (worst, times, attempt)
        if worst <= microbench.MAX_SPREAD or time.perf_counter() - start > microbench.RETRY_BUDGET_S:
            break
    _, times, _ = best  # `attempt` stays the number of attempts made
    return {key: microbench.log_timing(str(key), v, attempt) for key, v in times.items()}


def tiny_model(ops, dtype: torch.dtype = torch.float32, layers: int = 1):
    """A 64-wide Llama whose compute is negligible: its step time is the host's fixed cost."""
    from modelchip.runtime.models.decoder import DecoderLM

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rms_norm_eps": 1e-6}
    model = DecoderLM(ops, families.read(config, "tiny"), dtype)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.prepare_weights()
    return model
