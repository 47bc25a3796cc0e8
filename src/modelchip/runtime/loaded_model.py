"""`LoadedModel`: a checkpoint resolved, checked and loaded onto a backend, with what serving it needs.

The runtime's top: spec, weights on the backend, tokenizer, cache layouts, prompt checks and one-shot logits.
The engine schedules requests over it; `modelchip.LLM` (modelchip/llm.py) puts the two together.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch

from modelchip.errors import ModelchipError
from modelchip.runtime.backends import get_backend
from modelchip.runtime.backends.defaults import announce, default_backend_and_dtype
from modelchip.runtime.batch import build_batch
from modelchip.runtime.distributed import afd as afd_parallel
from modelchip.runtime.distributed import data_parallel, executor, launch
from modelchip.runtime.distributed.layout import make_layout
from modelchip.runtime.kv_cache import KVCache
from modelchip.runtime.loaders.resolve import resolve
from modelchip.runtime.loaders.weights import load_weights
from modelchip.runtime.models.decoder import FAMILIES, DecoderLM
from modelchip.runtime.quant import QuantizedWeight
from modelchip.spec import families

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelchipError(f"unsupported dtype {dtype!r}; choose from float32, bfloat16, float16")
    return DTYPES[dtype]


class LoadedModel:
    """`model` (alias, .gguf, checkpoint dir or hub id) loaded strictly onto `backend` on `device`.

    quantization: None (default) keeps a quantized checkpoint's linear weights packed as stored (GGUF blocks,
    block-scaled FP8, compressed-tensors INT8; docs/runtime.md); "none" dequantizes everything to `dtype` at
    load; naming the checkpoint's own method ("gguf", "fp8", "compressed-tensors") checks that it is that.

    tensor_parallel_size, data_parallel_size, expert_parallel_size: how many processes share the model and how
    (runtime/distributed/layout.py, docs/parallel.md).

    afd: (attention ranks, FFN ranks) runs attention-FFN disaggregation over that many processes, the step's
    batch split into `afd_micro_batches` micro-batches (runtime/distributed/afd.py, docs/parallel.md)."""

    def __init__(self, model: str, backend: str | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, allow_pickle: bool = False, block_size: int = 16,
                 tensor_parallel_size: int = 1, quantization: str | None = None, data_parallel_size: int = 1,
                 expert_parallel_size: int = 1, afd: tuple[int, int] | None = None,
                 afd_micro_batches: int = afd_parallel.DEFAULT_MICRO_BATCHES):
        self.layout = make_layout(tensor_parallel_size, data_parallel_size, expert_parallel_size)
        if afd is not None and self.layout.world_size > 1:
            raise ModelchipError(f"attention-FFN disaggregation and {self.layout.describe()} are exclusive: with "
                                 "AFD the attention ranks are one tensor-parallel group and the FFN ranks split the "
                                 "FFN (experts or width) among themselves")
        afd_config = afd_parallel.make_config(afd, afd_micro_batches, tensor_parallel_size)
        if backend is None or dtype is None:  # the fastest for the device (backends/defaults.py), said in one line
            backend, dtype, why = default_backend_and_dtype(device, backend, dtype)
            announce(why)
        self.dtype = torch_dtype(dtype)
        device = str(launch.rank_device(device, launch.local_rank()))  # torchrun: one accelerator per rank
        self.ops = get_backend(backend, device)
        self.device = self.ops.device
        # a parallel run (runtime/distributed): None for one process; rank 0 spawns or joins the other ranks
        self.parallel = executor.start(self.layout, self.device, dict(
            model=str(model), backend=backend, device=device, dtype=self.dtype, allow_pickle=allow_pickle,
            block_size=block_size, quantization=quantization, afd=afd, afd_micro_batches=afd_micro_batches),
            world_size=afd_config.world_size if afd_config else None)
        if self.parallel is not None and afd_config is None:
            self.layout = self.parallel.layout  # under torchrun with no sizes given: tensor parallel over all
        self.afd: afd_parallel.Role | None = None
        try:
            self._load(model, allow_pickle, block_size, quantization, afd_config)
        except BaseException:
            if self.parallel is not None and self.parallel.is_driver:
                self.parallel.close()
            raise
        if self.parallel is not None and self.parallel.is_driver:
            self.parallel.ready()  # every rank has loaded its shard, or the run ends naming the one that failed

    def _load(self, model: str, allow_pickle: bool, block_size: int, quantization: str | None,
              afd_config: afd_parallel.AFDConfig | None) -> None:
        if afd_config is not None:  # this rank's side; its group becomes ops.comm
            self.afd = afd_parallel.Role(afd_config, self.parallel.rank, self.ops)
            self.parallel.label = "attention-FFN"
        elif self.parallel is not None:
            self.ops.attach_group(layout=self.layout)
        found = resolve(model, allow_pickle=allow_pickle, quantization=quantization)
        self.quantization = found.quantization  # the method of the weights kept packed (None: all float)
        model_type = families.text_config(found.config)[1]
        if model_type not in FAMILIES:
            raise ModelchipError(f"the runtime cannot run model_type {model_type!r} (the cost model can); "
                                 f"supported: {', '.join(sorted(FAMILIES))}")
        self.spec = families.read(found.config, str(model))
        self.config = found.config
        self.tokenizer = found.tokenizer
        self.source = found.source
        with torch.inference_mode():
            self.model = (DecoderLM(self.ops, self.spec, self.dtype) if self.afd is None
                          else afd_parallel.build_model(self.ops, self.spec, self.dtype, self.afd))
            self.dequantized: Counter[str] = Counter()  # quantized tensors unpacked at load, by reason
            tensors = found.tensors if self.afd is None else afd_parallel.tensors_for(self.model, found.tensors)
            self.ignored_tensors = load_weights(self.model, tensors, self.dequantized)
            # as loaded, before the backend re-lays linear weights out (a tied LM head is listed once; a
            # quantized weight at its packed size, scales included)
            self.parameter_bytes = {n: p.numel() * p.element_size() for n, p in self.model.named_parameters()}
            self.parameter_bytes |= {f"{n}.{a}".lstrip("."): w.nbytes for n, m in self.model.named_modules()
                                     for a in getattr(m, "LINEAR_WEIGHTS", ())
                                     if isinstance(w := getattr(m, a, None), QuantizedWeight)}
            # each linear weight by name: (its packed format, or its float dtype; its weight count), what a
            # prediction of this run prices
            self.weight_formats = {f"{n}.{a}".lstrip("."): _format(w) for n, m in self.model.named_modules()
                                   for a in getattr(m, "LINEAR_WEIGHTS", ())
                                   if isinstance(w := getattr(m, a, None), QuantizedWeight | torch.Tensor)}
            self.model.prepare_weights()
        self.block_size = block_size
        self.layouts = self.model.cache_layouts()
        self.eos_ids = set(getattr(self.tokenizer, "eos_token_ids", None) or ())
        eos = found.config.get("eos_token_id")
        self.eos_ids |= set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text through the tokenizer, or ids as given), checked against the vocabulary."""
        if isinstance(prompt, str):
            if not prompt:
                raise ModelchipError("empty prompt")
            if self.tokenizer is None:
                raise ModelchipError(f"{self.source} has no tokenizer; pass token ids instead of text")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ModelchipError("empty prompt")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ModelchipError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return ids

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [len, vocab] (float32) of one full forward over `token_ids`."""
        ids = self.encode_prompt(token_ids)
        if self._driving():
            self.parallel.publish(("logits", ids))
        blocks = -(-len(ids) // self.block_size)
        cache = KVCache(self.ops, self.layouts, blocks, self.block_size, self.dtype)
        x, positions, meta = build_batch([ids], [0], [list(range(blocks))], self.block_size, self.device)
        with self._guard():
            return self._run(x, positions, meta, torch.arange(len(ids), device=self.device), cache)

    # -- what the engine runs (on every rank of a parallel run) ----------------------------------------------
    def make_cache(self, num_blocks: int, block_size: int) -> KVCache:
        """This rank's KV cache (its heads only, under tensor parallelism); the other ranks make theirs."""
        if self._driving():
            self.parallel.publish(("cache", num_blocks, block_size))
            self.parallel.cache_id += 1
        cache = KVCache(self.ops, self.layouts, num_blocks, block_size, self.dtype)
        cache.parallel_id = self.parallel.cache_id if self.parallel is not None else 0
        return cache

    @torch.inference_mode()
    def forward_step(self, ids: torch.Tensor, positions: torch.Tensor, meta, last: torch.Tensor | None,
                     cache: KVCache) -> torch.Tensor | None:
        """One forward over a flattened batch; logits [len(last), vocab] of the rows `last` (None: no rows).
        Rank 0 first sends the same inputs to the other ranks, so all run this step together."""
        if self._driving():
            if cache.parallel_id != self.parallel.cache_id:
                raise ModelchipError(f"a {self.parallel.label} model runs one engine at a time: this KV cache is not "
                                     "the one the other ranks hold (make a new engine, or a new LLM)")
            host = (ids.cpu(), positions.cpu(), meta.to(torch.device("cpu")),
                    None if last is None else last.cpu())
            self.parallel.publish(("step", *host))
        elif self.parallel is not None:  # a worker: inputs arrived on the host
            ids, positions, meta = ids.to(self.device), positions.to(self.device), meta.to(self.device)
            last = None if last is None else last.to(self.device)
        with self._guard():
            return self._run(ids, positions, meta, last, cache)

    def _run(self, ids, positions, meta, last, cache) -> torch.Tensor | None:
        if self.layout.data_parallel_size == 1:
            hidden = self.model(ids, positions, meta, cache.layers)
            return None if last is None else self.model.logits(hidden[last])
        # data-parallel attention: this rank's sequences only; the rows needing logits gathered to rank 0
        comm = self.ops.comm
        mine = data_parallel.local_batch(ids, positions, meta, last, comm.rank, comm.world_size)
        hidden = self.model(mine.ids, mine.positions, mine.meta, cache.layers)
        if last is None:
            return None
        rows = data_parallel.gather_rows(comm, hidden, mine)
        return self.model.logits(rows) if self.is_driver else None

    def close(self) -> None:
        """End a parallel run (stop the worker ranks); a no-op for one process."""
        if self.parallel is not None:
            self.parallel.close()

    @property
    def is_driver(self) -> bool:
        """True where requests are scheduled: a single process, or rank 0 of a parallel run."""
        return self.parallel is None or self.parallel.is_driver

    def _driving(self) -> bool:
        return self.parallel is not None and self.parallel.is_driver

    def _guard(self):
        return self.parallel.guard() if self._driving() else contextlib.nullcontext()


def _format(w: torch.Tensor | QuantizedWeight) -> tuple[str, int]:
    if isinstance(w, QuantizedWeight):
        return w.format, w.out_features * w.in_features
    return str(w.dtype).removeprefix("torch."), w.numel()
