"""/metrics in the Prometheus text exposition format (version 0.0.4), from the engine's own counters.

Besides modelchip_* metrics, the few that routers and autoscalers read by vLLM's names, which are the de-facto
standard: the Kubernetes Gateway API inference extension's endpoint picker scrapes vllm:num_requests_waiting,
vllm:num_requests_running, vllm:kv_cache_usage_perc and vllm:cache_config_info by default, and dashboards read the
prefix-cache hit rate as rate(vllm:prefix_cache_hits_total) / rate(vllm:prefix_cache_queries_total).
"""

from __future__ import annotations

from collections import Counter

from modelchip.engine.llm_engine import LLMEngine
from modelchip.engine.metrics import Histogram

FINISH_REASONS = ("stop", "length", "abort", "error")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}" if labels else ""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help: str, samples: list[tuple[dict, float]]) -> None:
        self.lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]

    def histogram(self, name: str, help: str, h: Histogram) -> None:
        self.lines += [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
        self.lines += [f'{name}_bucket{{le="{le}"}} {n}' for le, n in h.cumulative()]
        self.lines += [f"{name}_sum {_number(h.sum)}", f"{name}_count {h.count}"]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(engine: LLMEngine, http: Counter, errors: int = 0, model_name: str = "") -> str:
    """Every metric, read without locks: the engine thread only ever increments these numbers."""
    s = engine.stats
    bm = engine.block_manager
    w = _Writer()
    w.metric("modelchip_requests_received_total", "counter", "Requests the engine accepted.",
             [({}, s.requests_added)])
    w.metric("modelchip_requests_finished_total", "counter", "Requests finished, by finish reason.",
             [({"finish_reason": r}, s.finished.get(r, 0)) for r in FINISH_REASONS])
    w.metric("modelchip_prompt_tokens_total", "counter", "Prompt tokens of requests that got a first token.",
             [({}, s.prompt_tokens)])
    w.metric("modelchip_generation_tokens_total", "counter", "Tokens generated.", [({}, s.generation_tokens)])
    w.metric("modelchip_num_requests_running", "gauge", "Requests in the running batch.", [({}, engine.num_running)])
    w.metric("modelchip_num_requests_waiting", "gauge", "Requests waiting to be scheduled.",
             [({}, engine.num_waiting)])
    w.metric("modelchip_kv_cache_blocks_used", "gauge", "KV cache blocks held by requests.", [({}, bm.num_used_blocks)])
    w.metric("modelchip_kv_cache_blocks_free", "gauge", "KV cache blocks free.", [({}, bm.num_free_blocks)])
    w.metric("modelchip_kv_cache_blocks_total", "gauge", "KV cache blocks.", [({}, bm.num_blocks)])
    w.metric("modelchip_kv_cache_block_size", "gauge", "Tokens per KV cache block.", [({}, bm.block_size)])
    w.metric("modelchip_num_preemptions_total", "counter", "Requests preempted (recomputed later) for lack of blocks.",
             [({}, s.preemptions)])
    w.metric("modelchip_engine_steps_total", "counter", "Engine steps (forward passes).", [({}, s.steps)])
    w.metric("modelchip_engine_errors_total", "counter", "Engine steps that failed.", [({}, errors)])
    w.histogram("modelchip_time_to_first_token_seconds", "Time from arrival to first token.", s.ttft)
    w.histogram("modelchip_time_per_output_token_seconds", "Time between consecutive tokens of a request.", s.tpot)
    w.histogram("modelchip_e2e_request_latency_seconds", "Time from arrival to finish.", s.e2e)
    w.metric("modelchip_http_requests_total", "counter", "HTTP requests by path and status code.",
             [({"path": p, "code": str(c)}, n) for (p, c), n in sorted(dict(http).items())])
    w.metric("modelchip_kv_cache_blocks_cached", "gauge", "KV cache blocks the prefix cache can find (held or free).",
             [({}, bm.num_cached_blocks)])
    w.metric("modelchip_prefix_cache_queries_total", "counter",
             "Tokens of admitted requests looked up in the prefix cache.", [({}, bm.prefix_cache_queries)])
    w.metric("modelchip_prefix_cache_hits_total", "counter", "Tokens found in the prefix cache (not computed).",
             [({}, bm.prefix_cache_hits)])
    _vllm_names(w, engine, {"model_name": model_name})
    return "\n".join(w.lines) + "\n"


def _vllm_names(w: _Writer, engine: LLMEngine, labels: dict[str, str]) -> None:
    bm = engine.block_manager
    w.metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
             [(labels, engine.num_running)])
    w.metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
             [(labels, engine.num_waiting)])
    w.metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", [(labels, bm.usage)])
    w.metric("vllm:prefix_cache_queries_total", "counter",
             "Prefix cache queries, in terms of number of queried tokens.", [(labels, bm.prefix_cache_queries)])
    w.metric("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.",
             [(labels, bm.prefix_cache_hits)])
    config = {"block_size": str(bm.block_size), "num_gpu_blocks": str(bm.num_blocks),
              "enable_prefix_caching": str(bm.enable_prefix_caching)}
    w.metric("vllm:cache_config_info", "gauge", "Information of the KV cache config.", [(config, 1)])
