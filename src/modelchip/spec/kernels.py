"""Measured kernel and collective tables (spec/catalog/kernels.toml): what real GEMM, attention and
communication kernels reach on a chip, per shape, each table with the benchmark it was copied from.

Spec-sheet peaks stay in the chip files; these are measurements of mechanisms, kept as published (TFLOPS,
GB/s, microseconds), so the cost model turns them into efficiencies against the chip they were measured on.
Every table and figure carries a `source_id` naming its publication, so validation can leave one source out.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from modelchip.errors import ModelchipError
from modelchip.spec import dtypes
from modelchip.spec.chips import TAGS


@dataclass(frozen=True)
class Sourced:
    source: str
    tag: str
    source_id: str


@dataclass(frozen=True)
class GemmTable(Sourced):
    """A GEMM benchmark: rows of (M, N, K, achieved TFLOPS, achieved GB/s) on `measured_on`."""

    id: str
    arch: tuple[str, ...]
    dtype: str
    grouped: bool  # MoE grouped GEMM (M = tokens per expert) rather than one dense matmul
    measured_on: str
    rows: tuple[tuple[float, float, float, float, float], ...]
    # one kernel at decode M over many weight sizes: it measures how a call's streaming rate grows with its
    # weights (kernel_model.gemm_split), not an efficiency per M
    weight_sweep: bool = False
    # the weight format the kernel was measured on ("fp8": per-tensor or per-channel scales; "fp8_block": 128 x 128
    # block scales), where the source states it; "" where the table stands for every format of `dtype`
    weight: str = ""
    # whether the timed call includes quantizing 16-bit activations into the kernel's input format ("included",
    # what an engine pays that quantizes in front of each GEMM) or starts from activations the previous kernel
    # already wrote quantized ("excluded"); "" where the source does not split the two
    activation_quant: str = ""


@dataclass(frozen=True)
class AttentionFigure(Sourced):
    """The best a named attention kernel reaches on `measured_on`: compute-bound TFLOPS and memory-bound GB/s,
    or the fractions of peak and bandwidth where the source publishes those (0: not measured)."""

    id: str
    arch: tuple[str, ...]
    phase: str
    measured_on: str
    tflops: float = 0.0
    gbps: float = 0.0
    compute_fraction: float = 0.0
    memory_fraction: float = 0.0


@dataclass(frozen=True)
class EpLatencyTable(Sourced):
    """Low-latency expert-parallel dispatch and combine per MoE layer: rows of (EP ranks, tokens per rank,
    dispatch us, combine us) for tokens of `hidden` values routed to `top_k` experts. EP ranks is 0 where the
    source does not state it (`ep_unstated = true` in the file, rows of [tokens, dispatch, combine])."""

    id: str
    arch: tuple[str, ...]
    hidden: int
    top_k: int
    rows: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class AttentionLayerTable(Sourced):
    """Measured time of one decode step of one attention layer (projections included): rows of (model, chip,
    context, microseconds) with `gpus` GPUs holding `batch` sequences, attention split by `strategy`."""

    id: str
    gpus: int
    batch: int
    strategy: str
    weight_dtype: tuple[tuple[str, str], ...]  # (chip, dtype) of the projections
    rows: tuple[tuple[str, str, int, float], ...]


@dataclass(frozen=True)
class Fixed(Sourced):
    """A fixed time or ratio of one mechanism, for the architectures or link classes in `applies`."""

    id: str
    name: str
    applies: tuple[str, ...]
    value: float
    unit: str
    min_ranks: int = 0  # applies from this many ranks up (a ratio measured at that scale)


@dataclass(frozen=True)
class FusedMoeTable(Sourced):
    """A whole fused MoE layer timed per token count: rows of (tokens, microseconds) for tokens routed to `top_k`
    of `experts` experts, each `shard_width` wide (vLLM's N: the intermediate width on one GPU) over `hidden`."""

    id: str
    arch: tuple[str, ...]
    dtype: str
    measured_on: str
    experts: int
    top_k: int
    hidden: int
    shard_width: int
    rows: tuple[tuple[float, float], ...]
    # the serving engines that run this kernel for such experts (e.g. TensorRT-LLM's TRTLLM-Gen MoE); () for all
    engines: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectiveTable(Sourced):
    """A collective kernel's measured time by message size: rows of (bytes per rank, microseconds) among `ranks`
    ranks, for the link classes in `applies` (an architecture's scale-up link, "cdna3/scale-up")."""

    id: str
    op: str  # "all_reduce"
    applies: tuple[str, ...]
    ranks: int
    rows: tuple[tuple[float, float], ...]
    graphs: bool | None = None  # timed with the calls captured in a graph (True), launched one by one (False), either


@dataclass(frozen=True)
class KernelCatalog:
    gemm: tuple[GemmTable, ...]
    attention: tuple[AttentionFigure, ...]
    ep_latency: tuple[EpLatencyTable, ...]
    fixed: tuple[Fixed, ...]
    attention_layer: tuple[AttentionLayerTable, ...] = ()
    fused_moe: tuple[FusedMoeTable, ...] = ()
    collective: tuple[CollectiveTable, ...] = ()



def _sourced(raw: dict, where: str) -> dict:
    for key in ("source", "tag", "source_id"):
        if not raw.get(key):
            raise ModelchipError(f"{where}: every kernel table needs {key!r}")
    if raw["tag"] not in TAGS:
        raise ModelchipError(f"{where}: tag {raw['tag']!r} is not one of {', '.join(TAGS)}")
    return {"source": str(raw["source"]), "tag": str(raw["tag"]), "source_id": str(raw["source_id"])}


def _arch(raw: dict) -> tuple[str, ...]:
    arch = raw.get("arch", ())
    return (arch,) if isinstance(arch, str) else tuple(arch)


def _activation_quant(raw: dict, where: str) -> str:
    value = raw.get("activation_quant", "")
    if value not in ("", "included", "excluded"):
        raise ModelchipError(f"{where}: activation_quant must be 'included' or 'excluded', not {value!r}")
    return value


def parse(data: dict) -> KernelCatalog:
    gemm, attention, ep, fixed = [], [], [], []
    for i, raw in enumerate(data.get("gemm", [])):
        where = f"kernels.toml gemm[{i}] {raw.get('id', '')}"
        rows = tuple(tuple(float(x) for x in r) for r in raw.get("rows", []))
        if not rows or any(len(r) != 5 or min(r) <= 0 for r in rows):
            raise ModelchipError(f"{where}: rows must be positive [M, N, K, TFLOPS, GB/s]")
        if raw.get("weight_sweep") and raw.get("grouped"):
            raise ModelchipError(f"{where}: a weight-size sweep times dense calls; it cannot be grouped")
        gemm.append(GemmTable(id=raw["id"], arch=_arch(raw), dtype=dtypes.canonical(raw["dtype"]),
                              grouped=bool(raw.get("grouped", False)), measured_on=raw["measured_on"],
                              rows=rows, weight_sweep=bool(raw.get("weight_sweep", False)),
                              weight=dtypes.canonical(raw["weight"]) if raw.get("weight") else "",
                              activation_quant=_activation_quant(raw, where), **_sourced(raw, where)))
    for i, raw in enumerate(data.get("attention", [])):
        where = f"kernels.toml attention[{i}] {raw.get('id', '')}"
        nums = {k: float(raw.get(k, 0.0)) for k in ("tflops", "gbps", "compute_fraction", "memory_fraction")}
        if not any(nums.values()) or min(nums.values()) < 0:
            raise ModelchipError(f"{where}: needs a positive tflops, gbps, compute_fraction or memory_fraction")
        attention.append(AttentionFigure(id=raw["id"], arch=_arch(raw), phase=raw.get("phase", "decode"),
                                         measured_on=raw["measured_on"], **nums, **_sourced(raw, where)))
    for i, raw in enumerate(data.get("ep_latency", [])):
        where = f"kernels.toml ep_latency[{i}] {raw.get('id', '')}"
        rows = tuple(tuple(float(x) for x in r) for r in raw["rows"])
        if raw.get("ep_unstated", False):
            if not rows or any(len(r) != 3 or min(r) <= 0 for r in rows):
                raise ModelchipError(f"{where}: with ep_unstated, rows must be positive [tokens per rank, "
                                     "dispatch us, combine us]")
            rows = tuple((0.0, *r) for r in rows)
        elif not rows or any(len(r) != 4 or min(r) <= 0 for r in rows):
            raise ModelchipError(f"{where}: rows must be positive [EP ranks, tokens per rank, dispatch us, combine us]")
        ep.append(EpLatencyTable(id=raw["id"], arch=_arch(raw), hidden=int(raw["hidden"]),
                                 top_k=int(raw["top_k"]), rows=tuple(sorted(rows)), **_sourced(raw, where)))
    for a in {x for t in ep for x in t.arch}:
        sizes = {(t.hidden, t.top_k) for t in ep if a in t.arch}
        if len(sizes) > 1:  # merged per EP size and token count, so they must measure one message
            raise ModelchipError(f"kernels.toml: the {a} ep_latency tables measure different messages "
                                 f"(hidden, top_k) {sorted(sizes)}")
    for i, raw in enumerate(data.get("fixed", [])):
        where = f"kernels.toml fixed[{i}] {raw.get('id', '')}"
        if float(raw["value"]) < 0:
            raise ModelchipError(f"{where}: value must be non-negative")
        fixed.append(Fixed(id=raw["id"], name=raw["name"], applies=_arch({"arch": raw["applies"]}),
                           value=float(raw["value"]), unit=str(raw["unit"]), min_ranks=int(raw.get("min_ranks", 0)),
                           **_sourced(raw, where)))
    layers = []
    for i, raw in enumerate(data.get("attention_layer", [])):
        where = f"kernels.toml attention_layer[{i}] {raw.get('id', '')}"
        rows = tuple((str(m), str(c), int(n), float(us)) for m, c, n, us in raw["rows"])
        if not rows or any(n <= 0 or us <= 0 for _, _, n, us in rows) or raw.get("strategy") not in ("ep", "tp"):
            raise ModelchipError(f"{where}: rows must be [model, chip, context > 0, us > 0], strategy ep or tp")
        layers.append(AttentionLayerTable(id=raw["id"], gpus=int(raw["gpus"]), batch=int(raw["batch"]),
                                          strategy=raw["strategy"],
                                          weight_dtype=tuple(sorted(raw.get("weight_dtype", {}).items())),
                                          rows=rows, **_sourced(raw, where)))
    collectives = []
    for i, raw in enumerate(data.get("collective", [])):
        where = f"kernels.toml collective[{i}] {raw.get('id', '')}"
        rows = tuple(sorted(tuple(float(x) for x in r) for r in raw.get("rows", [])))
        if len(rows) < 2 or any(len(r) != 2 or min(r) <= 0 for r in rows) or int(raw.get("ranks", 0)) < 2:
            raise ModelchipError(f"{where}: needs ranks >= 2 and at least two positive rows [bytes, us]")
        if raw.get("op") != "all_reduce":
            raise ModelchipError(f"{where}: op must be 'all_reduce' (the only collective the model looks up by size)")
        graphs = raw.get("graphs")
        collectives.append(CollectiveTable(id=raw["id"], op=raw["op"], applies=_arch({"arch": raw["applies"]}),
                                           ranks=int(raw["ranks"]), rows=rows,
                                           graphs=None if graphs is None else bool(graphs), **_sourced(raw, where)))
    return KernelCatalog(tuple(gemm), tuple(attention), tuple(ep), tuple(fixed), tuple(layers),
                         fused_moe=tuple(_fused_moe(raw, i) for i, raw in enumerate(data.get("fused_moe", []))),
                         collective=tuple(collectives))


def _fused_moe(raw: dict, i: int) -> FusedMoeTable:
    where = f"kernels.toml fused_moe[{i}] {raw.get('id', '')}"
    rows = tuple(tuple(float(x) for x in r) for r in raw.get("rows", []))
    if not rows or any(len(r) != 2 or min(r) <= 0 for r in rows):
        raise ModelchipError(f"{where}: rows must be positive [tokens, microseconds]")
    shape = {k: int(raw.get(k, 0)) for k in ("experts", "top_k", "hidden", "shard_width")}
    if min(shape.values()) < 1 or shape["top_k"] > shape["experts"]:
        raise ModelchipError(f"{where}: experts, top_k (at most experts), hidden and shard_width must be positive")
    return FusedMoeTable(id=raw["id"], arch=_arch(raw), dtype=dtypes.canonical(raw["dtype"]),
                         measured_on=raw["measured_on"], rows=tuple(sorted(rows)), **shape,
                         engines=tuple(raw.get("engines", ())), **_sourced(raw, where))


@cache
def kernel_catalog() -> KernelCatalog:
    text = resources.files("modelchip.spec").joinpath("catalog", "kernels.toml").read_text()
    return parse(tomllib.loads(text))
