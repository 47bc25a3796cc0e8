"""Log-probabilities the engine reports, in vLLM's shape: per position a dict token id -> `Logprob`, holding
the token that is there (sampled or given in the prompt) and the k most likely ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PositionLogprobs = dict[int, "Logprob"]


@dataclass
class Logprob:
    logprob: float
    rank: int  # 1 = the most likely token
    decoded_token: str | None = None


def gather(logits: torch.Tensor, chosen: torch.Tensor, top: list[int]) -> list[PositionLogprobs]:
    """For each row of raw `logits` [R, V]: the chosen token's log-probability and rank, and the `top[r]` most
    likely tokens' (ranks 1..top[r]). The chosen token comes first in each dict."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = chosen.to(lp.device)
    chosen_lp = lp.gather(1, chosen[:, None])
    ranks = (lp > chosen_lp).sum(dim=1) + 1
    k = max(top, default=0)
    if k:
        top_lp, top_ids = lp.topk(k, dim=-1)
        top_lp, top_ids = top_lp.tolist(), top_ids.tolist()
    out = []
    for r, (tok, value, rank) in enumerate(zip(chosen.tolist(), chosen_lp[:, 0].tolist(), ranks.tolist(),
                                               strict=True)):
        entry = {int(tok): Logprob(value, int(rank))}
        for j in range(top[r]):
            entry.setdefault(int(top_ids[r][j]), Logprob(top_lp[r][j], j + 1))
        out.append(entry)
    return out
