"""A decode loop over a DecoderLM, the way a serving step runs one: build the batch's metadata on the host,
run the model through the paged cache, take the last logits, sample. Used to time real decode steps and to
measure the fixed host cost of a step on a model too small to cost anything else."""

from __future__ import annotations

import time

import torch

from modelchip.runtime.contract import AttentionMetadata
from modelchip.runtime.kv_cache import KVCache
from modelchip.spec import families


class DecodeHarness:
    def __init__(self, model, batch: int, context: int, steps: int, block_size: int = 16, seed: int = 0):
        self.model, self.ops, self.bs = model, model.ops, block_size
        self.dtype = model.dtype
        capacity = context + steps + 1
        per_seq = -(-capacity // block_size)
        self.cache = KVCache(model.cache_layouts(), batch * per_seq, block_size, model.dtype, model.device)
        gen = torch.Generator().manual_seed(seed)
        vocab = model.spec.vocab_size
        self.tokens = [torch.randint(0, vocab, (context,), generator=gen).tolist() for _ in range(batch)]
        self.blocks = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
        n = batch
        dev = model.device
        self.params = (torch.zeros(n, device=dev), torch.ones(n, device=dev), torch.zeros(n, dtype=torch.long,
                                                                                          device=dev))

    def _run(self, new: int) -> None:
        ids, pos, slots, starts, lens = [], [], [], [0], []
        for toks, blocks in zip(self.tokens, self.blocks, strict=True):
            total = len(toks)
            for p in range(total - new, total):
                ids.append(toks[p])
                pos.append(p)
                slots.append(blocks[p // self.bs] * self.bs + p % self.bs)
            starts.append(starts[-1] + new)
            lens.append(total)
        dev = self.model.device
        meta = AttentionMetadata(torch.tensor(starts, device=dev), torch.tensor(lens, device=dev),
                                 torch.tensor(self.blocks, device=dev), torch.tensor(slots, device=dev), self.bs)
        hidden = self.model(torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), meta, self.cache.layers)
        last = torch.tensor(starts[1:], device=dev) - 1
        picked = self.ops.sample(self.model.logits(hidden[last]), *self.params).tolist()
        for toks, t in zip(self.tokens, picked, strict=True):
            toks.append(int(t))

    @torch.inference_mode()
    def prefill(self) -> None:
        self._run(len(self.tokens[0]))

    @torch.inference_mode()
    def time_decode(self, steps: int) -> float:
        """Mean seconds per decode step over `steps` steps (after one warm-up step)."""
        self._run(1)
        start = time.perf_counter()
        for _ in range(steps):
            self._run(1)
        return (time.perf_counter() - start) / steps


def tiny_model(ops, dtype: torch.dtype = torch.float32):
    """A one-layer, 64-wide Llama whose compute is negligible: its step time is the host's fixed cost."""
    from modelchip.runtime.models.decoder import DecoderLM

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rms_norm_eps": 1e-6}
    model = DecoderLM(ops, families.read(config, "tiny"), dtype)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    return model
