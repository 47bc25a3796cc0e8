"""The engine against the LLM's own single-request outputs: continuous batching, chunked prefill, preemption by
recompute, abort, per-request seeds, stop strings and incremental detokenization (tiny random checkpoint)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from modelchip.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from modelchip.engine.block_manager import BlockManager  # noqa: E402
from modelchip.engine.detokenizer import IncrementalDetokenizer  # noqa: E402
from modelchip.engine.sequence import Sequence  # noqa: E402
from modelchip.errors import ModelchipError  # noqa: E402

GREEDY = dict(temperature=0.0, ignore_eos=True)


def prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 60, vocab: int = 400) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def alone(llm, prompt: list[int], max_tokens: int) -> list[int]:
    """The request run by itself: a fresh engine with room for it only."""
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=1024, max_num_seqs=1, max_num_batched_tokens=4096))
    engine.add_request("x", prompt, SamplingParams(max_tokens=max_tokens, **GREEDY))
    return run_all(engine)["x"].token_ids


def run_all(engine: LLMEngine, max_steps: int = 10_000, on_step=None) -> dict:
    finished = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        steps += 1
        if on_step:
            on_step(steps)
        assert steps < max_steps, "engine made no progress"
    return finished


@pytest.fixture(scope="module")
def references(tiny_llm):
    ps = prompts(12, seed=1)
    return ps, [alone(tiny_llm, p, 24) for p in ps]


def test_block_manager_allocates_and_frees():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = Sequence("a", [1] * 9, SamplingParams(max_tokens=4))
    assert bm.blocks_needed(seq, 9) == 3
    bm.allocate(seq, 9)
    assert len(seq.block_table) == 3 and bm.num_used_blocks == 3 and bm.num_free_blocks == 5
    seq.num_computed_tokens = 9
    assert bm.blocks_needed(seq, 3) == 0  # 12 tokens still fit in 3 blocks
    assert bm.blocks_needed(seq, 4) == 1
    assert not bm.can_allocate(6)
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 8


def test_batched_greedy_equals_alone(tiny_llm, references):
    ps, want = references
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=4096, max_num_seqs=16, max_num_batched_tokens=512))
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, SamplingParams(max_tokens=24, **GREEDY))
    got = run_all(engine)
    assert [got[str(i)].token_ids for i in range(len(ps))] == want
    assert engine.block_manager.num_used_blocks == 0


def test_requests_join_and_leave_every_step(tiny_llm, references):
    """Continuous batching: a new request every step, different lengths, so the batch changes each step."""
    ps, want = references
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=4096, max_num_seqs=5, max_num_batched_tokens=64))
    lengths = [24 - 2 * i for i in range(len(ps))]
    pending = list(enumerate(ps))
    batch_sizes = []

    def add_one(step: int) -> None:
        batch_sizes.append(engine.num_running)
        if pending:
            i, p = pending.pop(0)
            engine.add_request(str(i), p, SamplingParams(max_tokens=lengths[i], **GREEDY))

    add_one(0)
    got = run_all(engine, on_step=add_one)
    for i in range(len(ps)):
        assert got[str(i)].token_ids == want[i][: lengths[i]], f"request {i}"
    assert max(batch_sizes) == 5  # max_num_seqs caps the batch
    assert len(set(batch_sizes)) > 3


def test_chunked_prefill(tiny_llm):
    long_prompt = prompts(1, seed=7, lo=150, hi=151)[0]
    want = alone(tiny_llm, long_prompt, 16)
    budget = 32
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=4096, max_num_seqs=8, max_num_batched_tokens=budget))
    short = prompts(3, seed=8, lo=5, hi=10)
    short_want = [alone(tiny_llm, p, 16) for p in short]
    for i, p in enumerate(short):
        engine.add_request(f"s{i}", p, SamplingParams(max_tokens=16, **GREEDY))
    engine.step()
    engine.add_request("long", long_prompt, SamplingParams(max_tokens=16, **GREEDY))
    scheduled = []
    real = engine.scheduler.schedule

    def spy():
        out = real()
        scheduled.append({s.request_id: n for s, n in zip(out.seqs, out.num_new_tokens, strict=True)})
        return out

    engine.scheduler.schedule = spy
    got = run_all(engine)
    assert got["long"].token_ids == want
    assert [got[f"s{i}"].token_ids for i in range(3)] == short_want
    chunks = [s["long"] for s in scheduled if "long" in s]
    assert all(sum(s.values()) <= budget for s in scheduled)
    assert sum(c for c in chunks if c > 1) == len(long_prompt)
    assert len([c for c in chunks if c > 1]) >= 150 // budget  # the prompt really was split
    # decodes of the short requests kept running while the long prompt was prefilled
    assert any("long" in s and len(s) > 1 and s["long"] > 1 for s in scheduled)


def test_preemption_by_recompute(tiny_llm, references):
    ps, want = references
    # 12 requests of up to 59 + 24 tokens in 20 blocks of 16: they cannot all be resident
    engine = LLMEngine(tiny_llm, EngineConfig(num_kv_blocks=20, block_size=16, max_num_seqs=12,
                                              max_num_batched_tokens=256, watermark=0.0))
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, SamplingParams(max_tokens=24, **GREEDY))
    peak = []
    got = run_all(engine, on_step=lambda _: peak.append(engine.block_manager.num_used_blocks))
    assert engine.scheduler.num_preemptions > 0
    assert engine.stats.preemptions == engine.scheduler.num_preemptions
    assert max(peak) <= 20
    assert [got[str(i)].token_ids for i in range(len(ps))] == want
    assert engine.block_manager.num_used_blocks == 0


def test_abort_frees_blocks_at_once(tiny_llm):
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=4096, max_num_seqs=8, max_num_batched_tokens=512))
    for i, p in enumerate(prompts(4, seed=3)):
        engine.add_request(str(i), p, SamplingParams(max_tokens=50, **GREEDY))
    for _ in range(3):
        engine.step()
    held = {rid: len(s.block_table) for rid, s in engine.requests.items()}
    used = engine.block_manager.num_used_blocks
    out = engine.abort_request("1")
    assert out.finished and out.finish_reason == "abort"
    assert engine.block_manager.num_used_blocks == used - held["1"]
    assert engine.abort_request("1") is None  # already gone
    engine.add_request("w", [5, 6, 7], SamplingParams(max_tokens=50, **GREEDY))
    assert engine.abort_request("w").finish_reason == "abort"  # still waiting: nothing to free, no crash
    for rid in ("0", "2", "3"):
        engine.abort_request(rid)
    assert engine.block_manager.num_used_blocks == 0 and not engine.has_unfinished_requests()
    assert engine.stats.finished["abort"] == 5


def test_seeded_request_is_reproducible_in_any_batch(tiny_llm):
    p = prompts(1, seed=11)[0]
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)

    def run(others: int) -> list[int]:
        engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=4096, max_num_seqs=16))
        for i, q in enumerate(prompts(others, seed=20 + others)):
            engine.add_request(f"o{i}", q, SamplingParams(max_tokens=30, temperature=1.0, ignore_eos=True))
        engine.add_request("seeded", p, params)
        return run_all(engine)["seeded"].token_ids

    first = run(0)
    assert run(5) == first
    assert run(9) == first
    other_seed = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=1024))
    other_seed.add_request("x", p, SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=4321,
                                                  ignore_eos=True))
    assert run_all(other_seed)["x"].token_ids != first


def test_llm_generate_runs_through_the_engine(tiny_llm, references, monkeypatch):
    ps, want = references
    from modelchip.engine import llm_engine

    steps = []
    real = llm_engine.LLMEngine.step
    monkeypatch.setattr(llm_engine.LLMEngine, "step", lambda self: steps.append(1) or real(self))
    out = tiny_llm.generate(ps[:3], max_tokens=24, temperature=0.0)
    assert steps, "LLM.generate did not use the engine"
    # EOS may end a request early in LLM.generate; up to there it matches the engine run alone
    for o, w in zip(out, want[:3], strict=True):
        assert o.token_ids == w[: len(o.token_ids)]


def test_stop_strings_cut_and_never_stream(tiny_llm):
    tok = tiny_llm.tokenizer
    p = tok.encode("The engine schedules")
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=1024))
    engine.add_request("free", p, SamplingParams(max_tokens=40, **GREEDY))
    full = run_all(engine)["free"]
    text = full.text
    clean = [i for i in range(4, len(text) - 3) if "\ufffd" not in text[i - 2:i + 3]]
    assert clean, f"no usable stop string in {text!r}"
    stop = text[clean[0]:clean[0] + 3]
    cut = text.index(stop)
    engine.add_request("stopped", p, SamplingParams(max_tokens=40, stop=[stop, "never-there"], **GREEDY))
    deltas, last = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas.append(out.new_text)
            last = out
    assert last.finish_reason == "stop"
    assert last.text == text[:cut]
    assert "".join(deltas) == text[:cut]
    assert engine.block_manager.num_used_blocks == 0
    # the stop string may span tokens: no delta, nor the running concatenation, ever shows it
    running = ""
    for d in deltas:
        running += d
        assert stop not in running
    # LLM.generate agrees with the engine on the cut
    assert tiny_llm.generate([p], max_tokens=40, temperature=0.0, stop=[stop])[0].text == text[:cut]


def test_incremental_detokenization_matches_full_decode(tiny_llm):
    tok = tiny_llm.tokenizer
    rng = random.Random(0)
    for _ in range(300):  # random ids: byte tokens that split or break UTF-8 characters included
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 25))]
        d = IncrementalDetokenizer(tok, [], tiny_llm.eos_ids)
        parts = []
        for t in ids:
            d.add(t)
            parts.append(d.delta())
        d.finish()
        parts.append(d.delta(final=True))
        assert "".join(parts) == tok.decode([t for t in ids if t not in tiny_llm.eos_ids])
    text = "naïve café, 日本語のテキスト 😀🚀✨ Straße"
    d = IncrementalDetokenizer(tok)
    parts = []
    for t in tok.encode(text):
        d.add(t)
        parts.append(d.delta())
    assert "".join(parts) == text
    assert not any("\ufffd" in part for part in parts), "a delta split a UTF-8 character"


def test_bad_requests_are_refused(tiny_llm):
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=256))
    assert engine.max_model_len == 256
    with pytest.raises(ModelchipError, match="context"):
        engine.add_request("long", [5] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(ModelchipError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ModelchipError, match="empty"):
        engine.add_request("empty", [], SamplingParams())
    engine.add_request("ok", [5, 6], SamplingParams(max_tokens=2))
    with pytest.raises(ModelchipError, match="in use"):
        engine.add_request("ok", [5, 6], SamplingParams(max_tokens=2))
    assert run_all(engine)["ok"].num_output_tokens <= 2
