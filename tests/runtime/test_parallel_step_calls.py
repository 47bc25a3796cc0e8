"""The collectives the planner prices for one decode step of each parallel layout (cost/collectives.py) are the
ones the runtime makes: rank 0's communicator is wrapped in one that records every call (kind and input
bytes), one real decode step of a tiny checkpoint runs over gloo, and the record is compared with the step
function's list, call for call."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from modelchip.calibrate.harness import EngineHarness
from modelchip.conformance.tiny_checkpoint import write_checkpoint
from modelchip.conformance.tiny_models import CONFIGS
from modelchip.cost import collectives
from modelchip.llm import LLM
from modelchip.spec import families

BATCH, CONTEXT, F32 = 4, 8, 4.0
# the runtime's communicator methods, by the collective fit that prices them
KIND = {"all_reduce": "all_reduce", "all_gather": "all_gather", "all_to_all": "all_to_all", "send": "send_recv",
        "recv": "send_recv", "isend": "send_recv", "irecv": "send_recv", "broadcast": "send_recv",
        "ibroadcast": "send_recv"}


class CountingCommunicator:
    """Rank 0's communicator, recording (collective, input bytes) of every call before making it."""

    def __init__(self, inner, record: list):
        self.inner, self.record = inner, record

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in KIND:
            return attr

        def call(x, *args, **kwargs):
            # a broadcast is a message to each other member from its source, and one message to each of them
            src = args[0] if args else kwargs.get("src")
            messages = (self.inner.world_size - 1 if src == self.inner.rank else 1) if "broadcast" in name else 1
            self.record.extend([(KIND[name], x.numel() * x.element_size())] * messages)
            return attr(x, *args, **kwargs)
        return call


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    return {f: write_checkpoint(CONFIGS[f], root / f, seed=3) for f in ("llama", "qwen3_moe")}


def one_decode_step(path, **sizes) -> list[tuple[str, float]]:
    """Rank 0's collectives of one decode step of BATCH sequences at CONTEXT tokens, the step broadcast
    included (one per step, counted by wrapping rank 0's publish)."""
    torch.set_num_threads(1)
    llm = LLM(str(path), backend="reference", dtype="float32", **sizes)
    try:
        h = EngineHarness(llm, BATCH, CONTEXT, 4)
        h.prefill()
        record = []
        llm.ops.comm = CountingCommunicator(llm.ops.comm, record)
        if llm.afd is not None:  # the activations travel on the exchange's communicators
            for side in ("p2p", "to_ffn", "from_ffn"):
                if getattr(llm.afd, side) is not None:
                    setattr(llm.afd, side, CountingCommunicator(getattr(llm.afd, side), record))
        publish = llm.parallel.publish

        def counted(message):
            if message[0] == "step":
                record.append(("broadcast_object", None))
            return publish(message)
        llm.parallel.publish = counted
        h._run(1)
        return record
    finally:
        llm.close()


def expected(calls: list[collectives.CollectiveCall]) -> Counter:
    return Counter({name: sum(c.count for c in calls if c.name == name) for name in {c.name for c in calls}})


def bytes_of(record, name):
    return sorted(n for kind, n in record if kind == name)


def spec(family):
    return families.read(CONFIGS[family], family)


@pytest.mark.slow  # spawns a process group
def test_tensor_parallel_step_is_what_rank_0_calls(checkpoints):
    s = spec("llama")
    record = one_decode_step(checkpoints["llama"], tensor_parallel_size=2)
    calls = collectives.tensor_parallel_step(s.num_layers, s.hidden_size, s.vocab_size, 2, BATCH, BATCH, F32,
                                             CONTEXT)
    assert Counter(kind for kind, _ in record) == expected(calls)
    for name in ("all_reduce", "all_gather"):
        assert bytes_of(record, name) == sorted(c.nbytes for c in calls if c.name == name for _ in range(c.count))


@pytest.mark.slow
@pytest.mark.parametrize("data_parallel", [False, True], ids=["ep2", "dp2-ep2"])
def test_expert_parallel_step_is_what_rank_0_calls(checkpoints, data_parallel):
    s = spec("qwen3_moe")  # one dense layer (no collectives), one MoE layer of 6 experts, top 2
    moe_layers = sum(layer.ffn.kind == "moe" for layer in s.layers)
    sizes = {"expert_parallel_size": 2} | ({"data_parallel_size": 2} if data_parallel else {})
    record = one_decode_step(checkpoints["qwen3_moe"], **sizes)
    calls = collectives.expert_parallel_step(moe_layers, s.hidden_size, s.layers[1].ffn.top_k, 2, BATCH, BATCH,
                                             F32, CONTEXT, data_parallel=data_parallel)
    assert Counter(kind for kind, _ in record) == expected(calls)
    assert bytes_of(record, "all_gather") == [c.nbytes for c in calls if c.name == "all_gather"]
    # per MoE layer: row counts, dispatched rows, expert ids (routing-independent), then the combine, whose
    # rows are those the experts on rank 0 received (top_k per token only under even routing)
    a2a = [n for kind, n in record if kind == "all_to_all"]
    want = [c.nbytes for c in calls if c.name == "all_to_all"]
    assert [a2a[i:i + 3] for i in range(0, len(a2a), 4)] == [want[:3]] * moe_layers


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [(1, 1), (2, 1), (1, 2)], ids=lambda r: f"afd{r[0]}+{r[1]}")
def test_afd_step_is_what_rank_0_calls(checkpoints, ranks):
    s = spec("qwen3_moe")
    a, f = ranks
    record = one_decode_step(checkpoints["qwen3_moe"], afd=ranks, afd_micro_batches=2)
    step = collectives.afd_step(s.num_layers, s.hidden_size, s.vocab_size, a, f, 2, BATCH, BATCH, F32, CONTEXT)
    calls = step.calls()
    assert Counter(kind for kind, _ in record) == expected(calls)
    for name in ("all_reduce", "all_gather", "send_recv"):
        assert bytes_of(record, name) == sorted(c.nbytes for c in calls if c.name == name for _ in range(c.count))
