"""Contract v2's capture_step: the engine pads pure decode steps to capture sizes, hands the backend one step per
size, and replays what it returns; the outputs equal the same backend's uncaptured run."""

from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from modelchip import LLM, SamplingParams  # noqa: E402
from modelchip.engine import EngineConfig, LLMEngine  # noqa: E402
from modelchip.engine.step_capture import capture_sizes  # noqa: E402
from modelchip.runtime import backends  # noqa: E402
from modelchip.runtime.backends.reference import ReferenceBackend  # noqa: E402

PROMPTS = ["The engine schedules", "Blocks hold the keys and values. A block", "Unicode", "Stop strings end"]


class Recording(ReferenceBackend):
    """'Captures' by keeping the step it was handed (run once, as a graph capture warms up) and counting
    replays; a replay re-runs it on the inputs the engine wrote in place."""

    name = "recording"
    contract_version = 2
    captured: dict[int, object] = {}
    replays: Counter = Counter()

    def capture_step(self, step, batch_size):
        step()
        Recording.captured[batch_size] = step

        def replay():
            Recording.replays[batch_size] += 1
            return step()

        return replay


class Declines(ReferenceBackend):
    name = "declines"
    asked: list[int] = []

    def capture_step(self, step, batch_size):
        Declines.asked.append(batch_size)
        return None


def _run(llm, prompts=PROMPTS, max_num_seqs=8, max_tokens=12):
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=1024, max_num_seqs=max_num_seqs))
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(max_tokens=max_tokens + 3 * i, temperature=0, logprobs=2,
                                                     ignore_eos=True))
    out = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            got = out.setdefault(o.request_id, ([], []))
            got[0].extend(o.new_token_ids)
            got[1].extend(o.logprobs or [])
    return engine, out


@pytest.fixture
def recording(monkeypatch, tiny_dir):
    monkeypatch.setitem(backends.BUILTIN, "recording", Recording)
    monkeypatch.setitem(backends.BUILTIN, "declines", Declines)
    Recording.captured.clear()
    Recording.replays.clear()
    return LLM(str(tiny_dir), backend="recording", device="cpu", dtype="float32")


def test_captured_decode_equals_the_uncaptured_run(recording, tiny_llm):
    engine, got = _run(recording)
    _, want = _run(tiny_llm)  # the reference backend, which captures nothing
    assert engine.runner.capture is not None and engine.runner.capture.captured == set(Recording.captured)
    # 4 sequences decode together, then 3, 2 and 1 as they finish (max_tokens differ): padded to 4, 2 and 1
    assert set(Recording.captured) == {4, 2, 1} and all(Recording.replays[b] > 0 for b in (4, 2, 1))
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    for rid, (_, logprobs) in want.items():
        for mine, theirs in zip(got[rid][1], logprobs, strict=True):
            assert mine.keys() == theirs.keys()
            assert all(abs(mine[t].logprob - theirs[t].logprob) < 1e-5 for t in theirs)


def test_only_pure_decode_steps_are_captured(recording):
    # a request scoring its prompt and one whose prefill shares a step with decodes never reach the hook
    engine = LLMEngine(recording, EngineConfig(kv_cache_tokens=1024, max_num_seqs=4))
    engine.add_request("p", PROMPTS[0], SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=1))
    engine.step()  # prefill: not a decode step
    assert Recording.replays == Counter()
    while engine.has_unfinished_requests():
        engine.step()
    assert sum(Recording.replays.values()) == 2  # the two decode steps after the prefill sampled the first token


def test_a_backend_that_declines_runs_padded_and_eager(monkeypatch, tiny_dir, tiny_llm):
    monkeypatch.setitem(backends.BUILTIN, "declines", Declines)
    Declines.asked.clear()
    llm = LLM(str(tiny_dir), backend="declines", device="cpu", dtype="float32")
    engine, got = _run(llm, PROMPTS[:3])
    _, want = _run(tiny_llm, PROMPTS[:3])
    assert engine.runner.capture.captured == set() and sorted(Declines.asked) == [1, 2, 4]
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}


def test_backends_without_the_hook_get_no_padding(tiny_llm):
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=64))
    assert engine.runner.capture is None and engine.cache.num_blocks == engine.block_manager.num_blocks


def test_capture_sizes_follow_vllm():
    assert capture_sizes(1) == [1] and capture_sizes(3) == [1, 2, 4] and capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 24] and capture_sizes(64)[-3:] == [48, 56, 64]
