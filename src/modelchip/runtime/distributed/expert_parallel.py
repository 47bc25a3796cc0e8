"""Expert parallelism: a MoE layer's experts sharded whole over ranks, tokens sent to the rank holding their
expert and the results sent back, by all-to-all on the contract's communicator (`ops.comm`).

Rank r of M holds experts [r*E/M, (r+1)*E/M). The router is replicated, so every rank routes its own tokens.
Per MoE layer each rank then:

1. dispatch: sorts its (token, expert) assignments by the rank owning the expert; one all-to-all tells every
   rank how many rows it will receive, a second sends the rows (the token's hidden state, once per chosen
   expert), a third their experts' local ids;
2. computes its experts on the rows it received (`ops.moe_experts` with unit weights: one row, one expert);
3. combine: one all-to-all sends every result back to the rank the row came from, which weights and sums the
   top-k results of each token (in float32).

Every rank makes all four calls, with zero rows if it has no tokens, so the collectives always meet.

When every rank holds the same tokens (attention replicated, or tensor parallel, as vLLM's
`--enable-expert-parallel` without data parallelism) each rank dispatches only its 1/M chunk of them, and the
chunks' results are all-gathered after the combine: each token's experts still run once.
"""

from __future__ import annotations

import torch

from modelchip.errors import ModelchipError


def expert_range(num_experts: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of the experts rank holds, or an error naming the expert count that does not divide."""
    if num_experts % size:
        raise ModelchipError(f"expert parallel size {size} does not divide the number of experts ({num_experts}); "
                             "choose a size that divides it")
    per = num_experts // size
    return rank * per, (rank + 1) * per


def run_experts(ops, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor, replicated: bool) -> torch.Tensor:
    """The routed experts' weighted sum for every token of x [T, H] (weights/ids [T, top_k], global expert
    ids), with this rank holding only the experts of `gate_up` [E/M, 2I, H] and `down` [E/M, H, I].

    replicated: every rank has the same x (attention replicated or tensor parallel); else each rank has its own
    tokens (data-parallel attention)."""
    if not replicated:
        return dispatch_combine(ops, x, weights, ids, gate_up, down)
    comm, t = ops.comm, x.shape[0]
    chunk = -(-t // comm.world_size)
    lo, hi = min(comm.rank * chunk, t), min((comm.rank + 1) * chunk, t)
    mine = dispatch_combine(ops, x[lo:hi], weights[lo:hi], ids[lo:hi], gate_up, down)
    padded = x.new_zeros(chunk, x.shape[1])  # all_gather needs equal shapes: the last chunks may be short
    padded[:hi - lo] = mine
    return comm.all_gather(padded, dim=0)[:t]


def dispatch_combine(ops, x, weights, ids, gate_up, down) -> torch.Tensor:
    """This rank's tokens x [T, H] through the experts of the whole group: dispatch, this rank's experts
    (`ops.moe_experts` on the rows it received), combine. Every rank calls it; `ops` needs only `comm` and
    `moe_experts` (calibration times the exchange alone with experts that return their rows)."""
    comm, per = ops.comm, gate_up.shape[0]
    t, k = ids.shape
    flat = ids.reshape(-1)
    dest = torch.div(flat, per, rounding_mode="floor")
    order = torch.argsort(dest, stable=True)  # assignments grouped by the rank that holds their expert
    token = torch.arange(t, device=x.device).repeat_interleave(k)[order]
    sends = torch.bincount(dest, minlength=comm.world_size)
    recvs = comm.all_to_all(sends.reshape(-1, 1)).reshape(-1).tolist()
    sends = sends.tolist()
    rows = comm.all_to_all(x[token], recvs, sends)
    local = comm.all_to_all((flat - dest * per)[order].reshape(-1, 1), recvs, sends).reshape(-1)
    if rows.shape[0]:
        unit = torch.ones(rows.shape[0], 1, dtype=torch.float32, device=x.device)
        y = ops.moe_experts(rows, gate_up, down, unit, local[:, None])
    else:
        y = rows
    back = comm.all_to_all(y, sends, recvs)
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, token, back.float() * weights.reshape(-1)[order, None].float())
    return out.to(x.dtype)
