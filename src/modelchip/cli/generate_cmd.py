"""`modelchip generate`: run a model on this machine and print its continuation (or chat reply)."""

from __future__ import annotations

import sys
import time

from modelchip.cli import common


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a model on a backend (default: the reference, CPU)",
                       description="Load a model (alias, .gguf file, checkpoint dir or hub id) and generate. "
                                   "Example: modelchip generate --model smollm2-135m --chat "
                                   "--prompt 'What is the capital of France?'")
    p.add_argument("--model", required=True, help="smollm2-135m, a .gguf file, a checkpoint dir or a hub id")
    p.add_argument("--prompt", required=True, help="the prompt text (with --chat: the user's message)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    common.add_runtime(p, fastest=True)
    common.add_prefix_caching(p)
    common.add_parallel(p)
    p.add_argument("--json", action="store_true", help='print {"text": ..., "token_ids": [...]}')
    p.set_defaults(func=run)


def run(args) -> int:
    from modelchip.llm import LLM

    start = time.perf_counter()
    llm = LLM(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
              enable_prefix_caching=args.enable_prefix_caching, tensor_parallel_size=args.tensor_parallel_size,
              afd=common.afd_of(args), afd_micro_batches=args.afd_micro_batches,
              quantization=args.quantization)
    if not llm.is_driver:  # a torchrun rank > 0: run the steps rank 0 sends, print nothing
        from modelchip.runtime.distributed.worker import serve_steps

        serve_steps(llm)
        llm.close()
        return 0
    try:
        return _generate(args, llm, start)
    finally:
        llm.close()


def _generate(args, llm, start: float) -> int:
    loaded = time.perf_counter()
    kwargs = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  seed=args.seed, stop=args.stop or None)
    if args.chat:
        out = llm.chat([{"role": "user", "content": args.prompt}], **kwargs)
    else:
        out = llm.generate([args.prompt], **kwargs)[0]
    done = time.perf_counter()
    if args.json:
        common.print_json({"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                           "prompt_tokens": len(out.prompt_token_ids), "fallbacks": llm.ops.fallback_report(),
                           "quantization": llm.quantization, "dequantized_at_load": dict(llm.dequantized),
                           "backend_fallbacks": dict(getattr(llm.ops.backend, "fallbacks", {}) or {})})
        return 0
    print(out.text)
    n = len(out.token_ids)
    dtype = str(llm.dtype).removeprefix("torch.") + (f", {llm.quantization} weights" if llm.quantization else "")
    ranks = f" x{llm.parallel.world_size} ranks" if llm.parallel is not None else ""
    print(f"[{args.model} on {llm.ops.name}/{args.device}{ranks} {dtype}: load {loaded - start:.1f} s, "
          f"{n} tokens in {done - loaded:.1f} s ({n / max(done - loaded, 1e-9):.1f} tok/s)]", file=sys.stderr)
    return 0
