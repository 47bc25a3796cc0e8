"""`modelchip serve`: an OpenAI-compatible HTTP server for one model (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import threading

from modelchip.cli import common
from modelchip.errors import ModelchipError


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI API (chat/completions, completions, models)",
                       description="Load a model and serve it over an OpenAI-compatible HTTP API with continuous "
                                   "batching. Example: modelchip serve --model smollm2-135m --port 8000; then point "
                                   "an OpenAI client at http://127.0.0.1:8000/v1.")
    p.add_argument("--model", required=True, help="smollm2-135m, a .gguf file, a checkpoint dir or a hub id")
    p.add_argument("--served-model-name", default=None,
                   help="the name clients pass as `model` (default: the --model argument)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=os.environ.get("MODELCHIP_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every request (default: $MODELCHIP_API_KEY)")
    p.add_argument("--health-without-api-key", action="store_true",
                   help="answer GET /health without the API key (for liveness/readiness probes); every other route "
                        "still needs it")
    common.add_runtime(p, fastest=True)
    common.add_parallel(p)
    g = p.add_argument_group("engine")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="tokens per request, prompt plus output (default: the model's context, capped by the cache)")
    g.add_argument("--kv-cache-tokens", type=int, default=32768, help="KV cache size in tokens (default 32768)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block (default 16)")
    g.add_argument("--max-num-seqs", type=int, default=64, help="sequences per step at most (default 64)")
    g.add_argument("--max-num-batched-tokens", type=int, default=512,
                   help="new tokens per step at most; longer prompts are prefilled in chunks (default 512)")
    g.add_argument("--max-waiting-requests", type=int, default=1024,
                   help="requests waiting for the engine at most; more get HTTP 429 until the queue drains "
                        "(default 1024; 0: no bound)")
    common.add_prefix_caching(g)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ModelchipError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    return sock


def run(args) -> int:
    try:
        import uvicorn
        from fastapi import FastAPI  # noqa: F401
    except ImportError as exc:
        raise ModelchipError(f"`modelchip serve` needs fastapi and uvicorn ({exc}); pip install \"modelchip[serve]\"") \
            from exc
    import torch

    from modelchip.engine import EngineConfig, LLMEngine
    from modelchip.engine.async_engine import AsyncEngine
    from modelchip.llm import LLM
    from modelchip.serve.app import ServerState, create_app

    if args.api_key is not None and not args.api_key.strip():
        raise ModelchipError("--api-key must not be empty")
    if not _is_loopback(args.host) and not args.api_key:
        print(f"modelchip serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              "address can use the model", file=sys.stderr)
    if args.max_waiting_requests < 0:
        raise ModelchipError("--max-waiting-requests must be 0 (no bound) or positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    from modelchip.runtime.distributed import launch

    rank = (launch.torchrun_env() or (0, 1))[0]
    sock = _listen(args.host, args.port) if rank == 0 else None  # before loading: a taken port should fail fast
    llm = LLM(args.model, backend=args.backend, device=args.device, dtype=args.dtype, block_size=args.block_size,
              tensor_parallel_size=args.tensor_parallel_size,
              afd=common.afd_of(args), afd_micro_batches=args.afd_micro_batches, quantization=args.quantization)
    if not llm.is_driver:  # a torchrun rank > 0: run the steps rank 0 sends
        from modelchip.runtime.distributed.worker import serve_steps

        serve_steps(llm)
        llm.close()
        return 0
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=args.kv_cache_tokens, max_model_len=args.max_model_len,
                                         max_num_seqs=args.max_num_seqs,
                                         max_num_batched_tokens=args.max_num_batched_tokens,
                                         enable_prefix_caching=args.enable_prefix_caching))
    async_engine = AsyncEngine(engine)
    state = ServerState(llm, engine, args.served_model_name or args.model, args.api_key or None, async_engine,
                        max_waiting_requests=args.max_waiting_requests or None,
                        health_without_api_key=args.health_without_api_key)
    app = create_app(state)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"modelchip serve: {state.model_name} on {llm.ops.name}/{args.device} "
          f"{str(llm.dtype).removeprefix('torch.')}, "
          f"context {engine.max_model_len}, {engine.block_manager.num_blocks} KV blocks of {engine.block_size}"
          f"{'' if args.enable_prefix_caching else ' (no prefix caching)'}; "
          f"listening on http://{shown}:{port}/v1", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug"),
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    def http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            async_engine.stop()

    def shut_down(signum, frame) -> None:
        if server.should_exit:  # a second Ctrl-C: do not wait for open streams
            server.force_exit = True
        server.should_exit = True

    signal.signal(signal.SIGINT, shut_down)
    signal.signal(signal.SIGTERM, shut_down)
    failed: list[str] = []
    if llm.parallel is not None:
        def worker_lost(message: str) -> None:
            # a dead rank ends the server: requests in flight fail with the error, the process exits non-zero
            failed.append(message)
            print(f"modelchip serve: {message}; shutting down", file=sys.stderr, flush=True)
            server.should_exit = True
            async_engine.stop(timeout=0)

        llm.parallel.watch(worker_lost)
    # The HTTP event loop gets a background thread and the engine the main one: PyTorch's CPU thread pool runs
    # 2-3x faster when driven from the process's initial thread (see engine/async_engine.py).
    thread = threading.Thread(target=http, name="modelchip-http", daemon=True)
    thread.start()
    async_engine.run()
    thread.join(10)
    llm.close()
    if failed:
        raise ModelchipError(failed[0])
    return 0
