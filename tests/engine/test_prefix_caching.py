"""Prefix caching in the engine: greedy outputs identical with and without it (float32, with chunked prefill,
preemption and sequences sharing blocks), blocks found for a shared system prompt (hit counts worked out from the
token lists), reference counts and LRU eviction in the block pool, no block leaked after aborts or a failed step.
The block hash is checked against SHA-256 written out independently."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

torch = pytest.importorskip("torch")

from modelchip.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from modelchip.engine.block_manager import BlockManager  # noqa: E402
from modelchip.engine.block_pool import BlockPool, hash_block  # noqa: E402
from modelchip.engine.sequence import Sequence  # noqa: E402
from modelchip.errors import ModelchipError  # noqa: E402

GREEDY = dict(temperature=0.0, ignore_eos=True)
BS = 16


def shared_prompts(n: int, system_len: int, seed: int = 0, vocab: int = 400) -> list[list[int]]:
    rng = random.Random(seed)
    system = [rng.randrange(3, vocab) for _ in range(system_len)]
    return [system + [rng.randrange(3, vocab) for _ in range(rng.randrange(1, 30))] for _ in range(n)]


def run_all(engine: LLMEngine, max_steps: int = 10_000) -> dict:
    finished, steps = {}, 0
    while engine.has_unfinished_requests():
        finished.update((o.request_id, o) for o in engine.step() if o.finished)
        steps += 1
        assert steps < max_steps, "engine made no progress"
    return finished


def generate(llm, ps: list[list[int]], caching: bool, max_tokens: int = 12, **config) -> tuple[list, LLMEngine]:
    engine = LLMEngine(llm, EngineConfig(enable_prefix_caching=caching, block_size=BS, **config))
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, SamplingParams(max_tokens=max_tokens, **GREEDY))
    got = run_all(engine)
    assert_consistent(engine.block_manager)
    assert engine.block_manager.num_used_blocks == 0
    return [got[str(i)].token_ids for i in range(len(ps))], engine


def assert_consistent(bm: BlockManager) -> None:
    """Every block is exactly one of: held (ref > 0), empty, or free-and-cached; the hash map agrees."""
    pool = bm.pool
    held = {b for b in range(pool.num_blocks) if pool.ref_count[b] > 0}
    empty, evictable = set(pool.empty), set(pool.evictable)
    assert len(empty) == len(pool.empty), "a block is on the empty list twice"
    assert not (held & empty) and not (held & evictable) and not (empty & evictable)
    assert held | empty | evictable == set(range(pool.num_blocks))
    assert all(c >= 0 for c in pool.ref_count)
    assert {b: h for h, b in pool.cached.items()} == {b: h for b, h in enumerate(pool.block_hash) if h is not None}
    assert all(pool.block_hash[b] is not None for b in evictable)
    assert all(pool.block_hash[b] is None for b in empty)


# -- the block pool ----------------------------------------------------------------------------------------


def test_block_hash_chains_the_prefix():
    def sha(parent: bytes, tokens: list[int]) -> bytes:
        return hashlib.sha256(parent + struct.pack(f"<{len(tokens)}q", *tokens)).digest()

    a, b = [1, 2, 3, 4], [5, 6, 7, 8]
    assert hash_block(None, a) == sha(b"", a)
    assert hash_block(hash_block(None, a), b) == sha(sha(b"", a), b)
    # the same tokens after a different prefix are a different block
    assert hash_block(hash_block(None, b), b) != hash_block(hash_block(None, a), b)


def test_reference_counts_and_lru_eviction():
    pool = BlockPool(4)
    h = [bytes([i]) * 32 for i in range(4)]
    a = pool.allocate(2)
    b = pool.allocate(2)
    for block, key in zip(a + b, h, strict=True):
        pool.cache(block, key)
    pool.touch(a)  # a second holder of a's blocks
    pool.release(a)
    assert pool.num_free == 0 and pool.lookup(h[:2]) == a  # still held once: not free, not evictable
    with pytest.raises(ModelchipError, match="KV cache is full"):
        pool.allocate(1)
    pool.release(b)  # b freed first, tail first
    pool.release(a)
    assert pool.num_free == 4 and pool.lookup(h[:4]) == a + b  # free blocks stay findable
    pool.touch(pool.lookup(h[:1]))  # a hit on a free cached block takes it out of the eviction order
    assert pool.num_free == 3
    got = pool.allocate(2)  # evicts the least recently freed: b's tail, then b's head
    assert got == [b[1], b[0]]
    assert pool.lookup(h[2:4]) == [] and pool.lookup(h[:2]) == a
    pool.release(got)
    assert pool.lookup(h[2:3]) == []  # evicted blocks freed again come back empty, not cached
    with pytest.raises(ModelchipError, match="released more often"):
        pool.release([b[0], b[0]])


def test_a_hash_cached_twice_stays_one_block():
    pool = BlockPool(3)
    x, y = pool.allocate(2)
    pool.cache(x, b"k" * 32)
    pool.cache(y, b"k" * 32)  # the same content computed again elsewhere
    assert pool.lookup([b"k" * 32]) == [x] and pool.num_cached == 1
    pool.release([x, y])
    assert pool.empty.count(y) == 1 and list(pool.evictable) == [x]


def test_block_manager_finds_full_blocks_and_keeps_one_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    first = Sequence("a", list(range(10, 22)), SamplingParams(max_tokens=4))  # 3 full blocks
    bm.allocate(first, 12, bm.cached_prefix(first))
    assert bm.num_cached_blocks == 3 and bm.prefix_cache_queries == 12 and bm.prefix_cache_hits == 0
    same = Sequence("b", list(range(10, 22)), SamplingParams(max_tokens=4))
    prefix = bm.cached_prefix(same)
    assert prefix == first.block_table[:2]  # the third block holds the last token: it is computed again
    longer = Sequence("c", list(range(10, 22)) + [99], SamplingParams(max_tokens=4))
    assert bm.cached_prefix(longer) == first.block_table
    other = Sequence("d", [7] + list(range(11, 22)), SamplingParams(max_tokens=4))
    assert bm.cached_prefix(other) == []  # one token differs in the first block: no later block matches
    assert bm.blocks_needed(same, 4, prefix) == 1  # a fresh third block; the cached two are held, not free
    bm.allocate(same, 4, prefix)
    assert same.num_computed_tokens == 8 and same.block_table[:2] == prefix
    assert bm.prefix_cache_hits == 8 and bm.num_used_blocks == 4
    own = Sequence("e", list(range(10, 22)) + [99], SamplingParams(max_tokens=4, skip_reading_prefix_cache=True))
    assert bm.cached_prefix(own) == []  # what needs every prompt position's logits computes them all
    bm.free(first)
    bm.free(same)
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == 8
    assert_consistent(bm)


# -- the engine --------------------------------------------------------------------------------------------


def test_greedy_outputs_identical_with_and_without_caching(tiny_llm):
    ps = shared_prompts(10, system_len=45, seed=1)
    config = dict(kv_cache_tokens=4096, max_num_seqs=4, max_num_batched_tokens=64)
    off, _ = generate(tiny_llm, ps, caching=False, **config)
    on, engine = generate(tiny_llm, ps, caching=True, **config)
    assert on == off
    bm = engine.block_manager
    # 45 shared tokens are 2 full blocks; a request admitted after the first was scheduled finds both
    assert bm.prefix_cache_hits >= 2 * BS * (len(ps) - 4)
    assert bm.prefix_cache_queries == sum(map(len, ps))


def test_shared_system_prompt_hits_counted_exactly(tiny_llm):
    """One request at a time (max_num_seqs=1): every later request finds exactly the full blocks it shares with
    the earlier ones, worked out here from the token lists."""
    ps = shared_prompts(5, system_len=40, seed=2) + [shared_prompts(1, system_len=40, seed=3)[0]]
    off, _ = generate(tiny_llm, ps, caching=False, kv_cache_tokens=4096, max_num_seqs=1)
    on, engine = generate(tiny_llm, ps, caching=True, kv_cache_tokens=4096, max_num_seqs=1)
    assert on == off
    want = 0
    for i, p in enumerate(ps):
        earlier = [q + out for q, out in zip(ps[:i], on[:i], strict=True)]  # generated blocks are cached too
        best = 0
        for q in earlier:
            k = 0
            while (k + 1) * BS <= min(len(p) - 1, len(q)) and p[k * BS:(k + 1) * BS] == q[k * BS:(k + 1) * BS]:
                k += 1
            best = max(best, k)
        want += best * BS
    bm = engine.block_manager
    assert want == 2 * BS * 4  # 40 shared tokens: two full blocks for each of the four after the first
    assert bm.prefix_cache_hits == want and bm.prefix_cache_queries == sum(map(len, ps))


def test_copies_of_one_prompt_share_blocks_in_the_same_step(tiny_llm):
    """`n` copies of a prompt admitted together (what n > 1 does): the first computes the shared blocks, the
    others start past them in the same step and hold the same physical blocks."""
    p = shared_prompts(1, system_len=50, seed=4)[0][:50]
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=2048, block_size=BS, max_num_batched_tokens=512))
    for i in range(4):
        engine.add_request(str(i), p, SamplingParams(max_tokens=8, **GREEDY))
    first = []
    real = engine.scheduler.schedule

    def spy():
        out = real()
        if not first:
            first.append((list(out.num_new_tokens), [list(s.block_table) for s in out.seqs]))
        return out

    engine.scheduler.schedule = spy
    got = run_all(engine)
    num_new, tables = first[0]
    assert num_new == [50, 50 - 48, 50 - 48, 50 - 48]
    assert all(t[:3] == tables[0][:3] for t in tables) and len({t[3] for t in tables}) == 4
    want, _ = generate(tiny_llm, [p], caching=False, max_tokens=8, kv_cache_tokens=2048)
    assert all(got[str(i)].token_ids == want[0] for i in range(4))
    assert engine.block_manager.num_used_blocks == 0


def test_chunked_prefill_with_a_shared_prefix(tiny_llm):
    """A second request arrives while the first's long prompt is being prefilled in chunks: it finds only the
    blocks already scheduled, computes the rest itself, and both match the uncached run."""
    ps = shared_prompts(2, system_len=150, seed=5)
    want, _ = generate(tiny_llm, ps, caching=False, kv_cache_tokens=4096, max_num_batched_tokens=32)
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=4096, block_size=BS, max_num_batched_tokens=32))
    engine.add_request("0", ps[0], SamplingParams(max_tokens=12, **GREEDY))
    engine.step()
    engine.step()  # 64 of the first prompt's tokens computed: 4 full blocks cached
    engine.add_request("1", ps[1], SamplingParams(max_tokens=12, **GREEDY))
    got = run_all(engine)
    assert [got["0"].token_ids, got["1"].token_ids] == want
    assert engine.block_manager.prefix_cache_hits >= 4 * BS
    assert_consistent(engine.block_manager)


def test_preemption_with_shared_blocks(tiny_llm):
    ps = shared_prompts(12, system_len=40, seed=6)
    config = dict(num_kv_blocks=14, max_num_seqs=12, max_num_batched_tokens=256, watermark=0.0)
    off, _ = generate(tiny_llm, ps, caching=False, max_tokens=24, **config)
    on, engine = generate(tiny_llm, ps, caching=True, max_tokens=24, **config)
    assert engine.scheduler.num_preemptions > 0
    assert on == off


def test_aborts_leak_nothing(tiny_llm):
    ps = shared_prompts(6, system_len=40, seed=7)
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=1024, block_size=BS, max_num_seqs=4,
                                              max_num_batched_tokens=48))
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, SamplingParams(max_tokens=40, **GREEDY))
    rng = random.Random(0)
    live = [str(i) for i in range(len(ps))]
    while live:
        engine.step()
        assert_consistent(engine.block_manager)
        engine.abort_request(live.pop(rng.randrange(len(live))))  # running, mid-prefill or still waiting
    assert not engine.has_unfinished_requests()
    bm = engine.block_manager
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == bm.num_blocks
    assert all(c == 0 for c in bm.pool.ref_count)
    assert_consistent(bm)
    # the cache outlives the aborted requests and is still right
    fresh, _ = generate(tiny_llm, ps[:1], caching=False, max_tokens=6, kv_cache_tokens=1024)
    engine.add_request("again", ps[0], SamplingParams(max_tokens=6, **GREEDY))
    assert run_all(engine)["again"].token_ids == fresh[0]


def test_a_failed_step_forgets_the_cache(tiny_llm):
    ps = shared_prompts(2, system_len=40, seed=8)
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=1024, block_size=BS))
    engine.add_request("0", ps[0], SamplingParams(max_tokens=4, **GREEDY))
    real = engine.runner.run
    engine.runner.run = lambda *a: (_ for _ in ()).throw(RuntimeError("device lost"))
    with pytest.raises(RuntimeError):
        engine.step()
    assert engine.block_manager.num_cached_blocks > 0  # cached when scheduled, never written
    outs = engine.fail_all("device lost")
    assert [o.finish_reason for o in outs] == ["error"]
    assert engine.block_manager.num_cached_blocks == 0
    assert_consistent(engine.block_manager)
    engine.runner.run = real
    want, _ = generate(tiny_llm, ps[1:], caching=False, max_tokens=4, kv_cache_tokens=1024)
    engine.add_request("1", ps[1], SamplingParams(max_tokens=4, **GREEDY))
    assert run_all(engine)["1"].token_ids == want[0]


def test_llm_generate_shares_a_system_prompt(tiny_dir):
    from modelchip import LLM

    ps = shared_prompts(4, system_len=40, seed=9)
    on = LLM(str(tiny_dir), backend="reference", device="cpu", dtype="float32")
    off = LLM(str(tiny_dir), backend="reference", device="cpu", dtype="float32", enable_prefix_caching=False)
    assert on.enable_prefix_caching and not off.enable_prefix_caching
    got = on.generate(ps, max_tokens=10, temperature=0.0)
    assert [g.token_ids for g in got] == [g.token_ids for g in off.generate(ps, max_tokens=10, temperature=0.0)]


def test_n_completions_compute_the_prompt_once(tiny_llm):
    # n = 3: completion 0 computes the prompt; the other two join once it has, and find its full blocks cached
    prompt = shared_prompts(1, 5 * BS + 3, seed=7)[0]
    engine = LLMEngine(tiny_llm, EngineConfig(enable_prefix_caching=True, block_size=BS))
    engine.add_request("r", prompt, SamplingParams(max_tokens=4, n=3, temperature=1.0, seed=1))
    outs = [o for o in run_all_outputs(engine) if o.finished]
    assert sorted(o.index for o in outs) == [0, 1, 2]
    bm = engine.block_manager
    full = (len(prompt) - 1) // BS  # the last prompt token is always computed (its logits are needed)
    assert bm.prefix_cache_queries == 3 * len(prompt)
    assert bm.prefix_cache_hits == 2 * full * BS
    assert_consistent(bm)
    assert bm.num_used_blocks == 0


def run_all_outputs(engine: LLMEngine, max_steps: int = 10_000) -> list:
    outs, steps = [], 0
    while engine.has_unfinished_requests():
        outs += engine.step()
        steps += 1
        assert steps < max_steps, "engine made no progress"
    return outs
