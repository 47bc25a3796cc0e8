"""The serving engine: paged KV blocks per request, continuous batching with chunked prefill, preemption by
recompute, per-request sampling, incremental detokenization. `LLM.generate` runs through it; the server drives
it from one background thread (`AsyncEngine`)."""

from modelchip.engine.llm_engine import EngineConfig, LLMEngine, RequestOutput
from modelchip.engine.sampling_params import SamplingParams

__all__ = ["EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]
