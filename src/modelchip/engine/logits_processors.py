"""Shaping a batch's logits before sampling, each request by its own `SamplingParams`.

One entry point, `apply`, called by the model runner on the float32 logits of the rows it samples. A request's
own processors (`SamplingParams.logits_processors`: `(output_token_ids, logits[V]) -> logits[V]`, e.g. a
grammar mask) run first, row by row; then the built-in ones, vectorised over the rows that use them:
repetition, frequency and presence penalties, logit bias, and the `min_tokens` mask. Rows of requests that
shape nothing are left untouched, and the input tensor is never written (its raw values give the logprobs).
"""

from __future__ import annotations

import torch

from modelchip.engine.sequence import Sequence


def apply(logits: torch.Tensor, seqs: list[Sequence], eos_ids: set[int]) -> torch.Tensor:
    """Logits [S, V] of `seqs` (one row each, in order) -> a shaped copy, or the same tensor when no row asks."""
    rows = [i for i, s in enumerate(seqs) if s.params.shapes_logits]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        seq = seqs[i]
        for processor in seq.params.logits_processors:
            logits[i] = processor(seq.output_token_ids, logits[i])
    penalised = [i for i in rows if _has_penalty(seqs[i])]
    if penalised:
        logits[penalised] = apply_penalties(logits[penalised], [seqs[i] for i in penalised])
    _apply_logit_bias(logits, [(i, seqs[i].params.logit_bias) for i in rows if seqs[i].params.logit_bias])
    _mask_early_stops(logits, [(i, seqs[i]) for i in rows], eos_ids)
    return logits


def _has_penalty(seq: Sequence) -> bool:
    p = seq.params
    return bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0)


def _token_matrix(token_lists: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """Counts [R, V] of each row's tokens (float32)."""
    width = max((len(t) for t in token_lists), default=0)
    counts = torch.zeros(len(token_lists), vocab + 1, dtype=torch.float32, device=device)
    if width:
        # pad with an extra column `vocab` that is dropped afterwards
        ids = torch.full((len(token_lists), width), vocab, dtype=torch.long)
        for r, toks in enumerate(token_lists):
            ids[r, :len(toks)] = torch.tensor(toks, dtype=torch.long)
        ids = ids.to(device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab]


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition penalty over prompt and output tokens (a seen token's logit divided by the penalty when
    positive, multiplied when not: HF's and vLLM's rule), then OpenAI's frequency and presence penalties over
    output tokens: logit - count * frequency_penalty - (count > 0) * presence_penalty."""
    vocab, dev = logits.shape[1], logits.device
    out_counts = _token_matrix([s.output_token_ids for s in seqs], vocab, dev)
    # any positive penalty is valid, but 1e-122 is 0 in float32 and 1e300 infinite: held within the format's
    # range, and so are the logits it scales, so a seen token gets the most (or least) weight float32 can give
    # it rather than an inf that turns the probabilities into NaN (a fuzzed request found it)
    f32 = torch.finfo(torch.float32)
    rep = torch.tensor([min(max(s.params.repetition_penalty, f32.tiny), f32.max) for s in seqs],
                       dtype=torch.float32, device=dev)[:, None]
    if bool((rep != 1.0).any()):
        seen = (_token_matrix([s.prompt_token_ids for s in seqs], vocab, dev) > 0) | (out_counts > 0)
        big = torch.finfo(logits.dtype).max
        scaled = torch.where(logits > 0, (logits / rep).clamp(max=big), (logits * rep).clamp(min=-big))
        logits = torch.where(seen & logits.isfinite(), scaled, logits)  # a masked (-inf) logit stays masked
    freq = torch.tensor([s.params.frequency_penalty for s in seqs], dtype=torch.float32, device=dev)[:, None]
    pres = torch.tensor([s.params.presence_penalty for s in seqs], dtype=torch.float32, device=dev)[:, None]
    return logits - out_counts * freq - (out_counts > 0).float() * pres


def _apply_logit_bias(logits: torch.Tensor, biased: list[tuple[int, dict[int, float]]]) -> None:
    if not biased:
        return
    rows = [r for r, bias in biased for _ in bias]
    cols = [t for _, bias in biased for t in bias]
    values = [float(v) for _, bias in biased for v in bias.values()]
    dev = logits.device
    logits.index_put_((torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)),
                      torch.tensor(values, dtype=logits.dtype, device=dev), accumulate=True)


def _mask_early_stops(logits: torch.Tensor, rows: list[tuple[int, Sequence]], eos_ids: set[int]) -> None:
    """While a request has fewer than `min_tokens` outputs, neither EOS nor its stop_token_ids can be drawn."""
    for i, seq in rows:
        if seq.num_output_tokens < seq.params.min_tokens:
            banned = sorted(eos_ids | set(seq.params.stop_token_ids))
            if banned:
                logits[i, banned] = float("-inf")
