"""Drive a DecoderLM through the paged KV cache the way the engine does: a chunked prefill, a prefill
batched with the next chunk, then batched greedy decode steps, with blocks handed out in shuffled order."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelchip.runtime.contract import AttentionMetadata
from modelchip.runtime.kv_cache import KVCache
from modelchip.runtime.models.decoder import DecoderLM

BLOCK = 4
PROMPTS = ([5, 17, 2, 60, 33, 8, 91, 40, 12, 77, 3], [44, 9, 70, 21, 6])
FIRST_CHUNK = 6  # the first prompt is prefilled in two chunks, the second one joins the second chunk
NEW_TOKENS = 8


@dataclass
class Trace:
    logits: list[torch.Tensor]  # per step, [new tokens, vocab] float32 on CPU
    picks: list[list[int]]  # per sequence, the greedy ids the model's own sampler chose
    pick_logits: list[list[torch.Tensor]]  # per sequence, the logits row each pick was made from
    tokens: list[list[int]]  # per sequence, the tokens fed back (its own picks, or the forced ones)


def run(model: DecoderLM, ops, forced: list[list[int]] | None = None) -> Trace:
    """Greedy-decode NEW_TOKENS for both prompts. With `forced`, feed those tokens instead of the model's own
    picks (teacher forcing), so a later step is compared on the same inputs even after a near-tie."""
    device = ops.device
    seqs = [list(p) for p in PROMPTS]
    need = [-(-(len(p) + NEW_TOKENS) // BLOCK) for p in PROMPTS]
    order = torch.randperm(sum(need) + 1, generator=torch.Generator().manual_seed(0)).tolist()
    tables = [order[:need[0]], order[need[0]:need[0] + need[1]]]
    cache = KVCache(ops, model.cache_layouts(), sum(need) + 1, BLOCK, model.dtype)
    trace = Trace([], [[], []], [[], []], seqs)
    # a step is [(sequence, first new position, end)]: chunk 1 of prompt 0 alone (no token to pick yet),
    # then chunk 2 of prompt 0 with all of prompt 1, then decode steps of both
    trace.logits.append(_step(model, [(0, 0, FIRST_CHUNK)], seqs, tables, cache, device))
    step = [(0, FIRST_CHUNK, len(PROMPTS[0])), (1, 0, len(PROMPTS[1]))]
    for _ in range(NEW_TOKENS):
        logits = _step(model, step, seqs, tables, cache, device)
        trace.logits.append(logits)
        last = torch.tensor([hi - lo for _, lo, hi in step]).cumsum(0) - 1
        for s, tok in enumerate(_greedy(ops, logits[last], device)):
            trace.picks[s].append(tok)
            trace.pick_logits[s].append(logits[last[s]])
            seqs[s].append(forced[s][len(trace.picks[s]) - 1] if forced else tok)
        step = [(s, len(seqs[s]) - 1, len(seqs[s])) for s in (0, 1)]
    return trace


def _step(model, step, seqs, tables, cache, device) -> torch.Tensor:
    ids, pos, slots, starts, lens, table = [], [], [], [0], [], []
    for s, lo, hi in step:
        for p in range(lo, hi):
            ids.append(seqs[s][p])
            pos.append(p)
            slots.append(tables[s][p // BLOCK] * BLOCK + p % BLOCK)
        starts.append(starts[-1] + hi - lo)
        lens.append(hi)
        table.append(tables[s])
    width = max(map(len, table))
    meta = AttentionMetadata(torch.tensor(starts, device=device), torch.tensor(lens, device=device),
                             torch.tensor([t + [-1] * (width - len(t)) for t in table], device=device),
                             torch.tensor(slots, device=device), BLOCK)
    with torch.inference_mode():
        hidden = model(torch.tensor(ids, device=device), torch.tensor(pos, device=device), meta, cache.layers)
        return model.logits(hidden).cpu()


def _greedy(ops, logits: torch.Tensor, device) -> list[int]:
    n = logits.shape[0]
    zeros = torch.zeros(n, device=device)
    with torch.inference_mode():
        ids = ops.sample(logits.to(device), zeros, torch.ones(n, device=device),
                         torch.zeros(n, dtype=torch.long, device=device))
    return [int(t) for t in ids.tolist()]
