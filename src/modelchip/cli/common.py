"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import json

from modelchip.cost.conventions import CONVENTIONS, Precision, convention  # noqa: F401 (Precision re-exported)
from modelchip.spec import dtypes


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of steps, rounds, threads...)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def add_precision(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("number formats (default: the Step-3 paper's, everything 8-bit)")
    g.add_argument("--weight-dtype", default="fp8", metavar="D",
                   help="weight format: fp8, int8, bf16, fp4, or a packed one counted with its scales: q8_0, "
                        "q4_0, q4_1, q4_k, q6_k, fp8_block")
    g.add_argument("--kv-dtype", default="fp8", metavar="D", help="KV cache format (default fp8)")
    g.add_argument("--compute-dtype", default="auto", metavar="D",
                   help="math format; auto = the weight format where the chip has a peak for it, else bf16")
    g.add_argument("--ignore-pinned-kv", action="store_true",
                   help="use --kv-dtype everywhere, even where a model's deployment pins a KV format "
                        "(MiniMax M1 and Llama 4 keep BF16 KV in their full-attention layers)")
    g.add_argument("--convention", default="paper", choices=sorted(CONVENTIONS),
                   help="counting convention: paper (Step-3 section 4.1, default) or exact")


def precision(args: argparse.Namespace) -> Precision:
    return Precision(weight=dtypes.canonical(args.weight_dtype), kv=dtypes.canonical(args.kv_dtype),
                     compute=args.compute_dtype, honor_pins=not args.ignore_pinned_kv)


def counting(args: argparse.Namespace):
    return convention(args.convention)


def add_sets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="what-if override of a config field, e.g. num_key_value_heads=8 or attention=mfa-kr "
                        "(repeatable; applies to every model; per model: --models step3:attention=mha)")


def add_runtime(p: argparse.ArgumentParser, dtype: bool = True, fastest: bool = False) -> None:
    """Where a command runs a model: backend, device and (optionally) dtype. With `fastest`, an unset backend or
    dtype is left None for `LLM` to pick the fastest for the device (and say which)."""
    if fastest:
        p.add_argument("--backend", default=None,
                       help="backend name, built-in or a modelchip.backends entry point (default: the fastest for "
                            "the device, cpu on a CPU; reference to check against the reference)")
    else:
        p.add_argument("--backend", default="reference",
                       help="backend name, built-in or a modelchip.backends entry point (default reference)")
    p.add_argument("--device", default="cpu", help="torch device for the backend (default cpu)")
    if dtype and fastest:
        p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bfloat16 on a CPU "
                                                     "with AVX512-BF16 or AMX, else float32)")
    elif dtype:
        p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    if fastest:
        p.add_argument("--quantization", default=None, metavar="Q",
                       help="default: keep a quantized checkpoint's weights packed as stored (GGUF blocks, FP8, "
                            "compressed-tensors INT8); 'none' dequantizes them to --dtype at load")


def add_prefix_caching(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the KV cache of full blocks a prompt shares with earlier ones (default: on; "
                        "--no-enable-prefix-caching turns it off)")


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def add_parallel(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                   help="split the model over N processes (tensor parallel): this process is "
                        "rank 0 and spawns N-1 workers on this machine, or, under torchrun (MASTER_ADDR, "
                        "MASTER_PORT, RANK, WORLD_SIZE set), every rank runs the command and joins (default 1)")
    p.add_argument("--expert-parallel-size", "-ep", type=int, default=1, metavar="M",
                   help="shard MoE experts whole over M processes, tokens sent to them by all-to-all; 1 or the "
                        "tensor- or data-parallel size; alone, attention is replicated (default 1)")
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1, metavar="D",
                   help="data-parallel attention over D processes (each its own sequences and KV cache) with "
                        "expert-parallel MoE, as DeepSeek deploys it; needs --expert-parallel-size D (default 1)")
    p.add_argument("--afd-attention-ranks", type=int, default=None, metavar="A",
                   help="attention-FFN disaggregation (Step-3's AFD): A ranks hold attention, KV cache, embedding "
                        "and LM head (tensor parallel among them); with --afd-ffn-ranks (docs/parallel.md)")
    p.add_argument("--afd-ffn-ranks", type=int, default=None, metavar="F",
                   help="attention-FFN disaggregation: F ranks hold every layer's FFN (dense: tensor parallel; "
                        "MoE: experts split over them); the run has A + F processes")
    p.add_argument("--afd-micro-batches", type=int, default=2, metavar="M",
                   help="AFD: split each step's sequences into M micro-batches so attention of one overlaps the "
                        "FFN of another (default 2)")


def afd_of(args) -> tuple[int, int] | None:
    """(attention ranks, FFN ranks) from --afd-attention-ranks/--afd-ffn-ranks, or None (both unset)."""
    from modelchip.errors import ModelchipError

    a, f = args.afd_attention_ranks, args.afd_ffn_ranks
    if a is None and f is None:
        return None
    if a is None or f is None:
        raise ModelchipError("attention-FFN disaggregation needs both --afd-attention-ranks and --afd-ffn-ranks")
    return a, f


def parallel_sizes(args) -> dict:
    """The LLM keywords of add_parallel's options."""
    return dict(tensor_parallel_size=args.tensor_parallel_size, expert_parallel_size=args.expert_parallel_size,
                data_parallel_size=args.data_parallel_size, afd=afd_of(args), afd_micro_batches=args.afd_micro_batches)
