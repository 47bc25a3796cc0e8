"""One op check: a case (inputs built on CPU, deterministic), the call on the backend's device, and a judge
that compares the output with the float64 oracle: its dtype and shape first, then its values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modelchip.conformance import oracle
from modelchip.conformance.tolerances import TIE_TOL, closeness, exactness
from modelchip.runtime.contract import AttentionMetadata, CacheLayout

HOST_FIELDS = ("query_start_loc_cpu", "context_lens_cpu")


@dataclass
class Verdict:
    passed: bool
    max_abs_err: float | None = None
    ratio: float | None = None  # worst error / allowed error (<= 1 passes)
    tolerance: str = ""
    detail: str = ""  # why it failed, or what was allowed (ties)


@dataclass
class Case:
    op: str
    label: str  # what this case exercises, e.g. "decode", "MLA latent values"
    dtype: torch.dtype  # the activation dtype under test
    shape: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    judge: Callable[[Case, Any], Verdict] | None = None  # default: `close`
    inplace_arg: int | None = None  # the op's result is this argument, written in place
    seed: int | None = None  # pass a generator seeded with this (sampling)
    prepare_arg: int | None = None  # pass this weight through the backend's prepare_linear first


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, copy=True)  # a backend that writes into its inputs must not touch the case
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        host = HOST_FIELDS if isinstance(obj, AttentionMetadata) else ()  # host copies stay on the host
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.name not in host})
    if isinstance(obj, tuple | list):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def _device_copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # keep the strides of deliberately non-contiguous inputs: kernels that assume contiguity must be caught
    if t.is_contiguous():
        return t.to(device, copy=True)
    base = t.as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0).to(device, copy=True)
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


def run_case(ops, case: Case, device: torch.device) -> Verdict:
    args = tuple(_device_copy(a, device) if isinstance(a, torch.Tensor) else to_device(a, device)
                 for a in case.args)
    kwargs = to_device(case.kwargs, device)
    if case.seed is not None:
        kwargs["generator"] = torch.Generator(device=device).manual_seed(case.seed)
    try:
        with torch.inference_mode():
            if case.prepare_arg is not None:
                i = case.prepare_arg
                args = args[:i] + (ops.prepare_linear(args[i]),) + args[i + 1:]
            if case.op == "paged_attention" and getattr(ops, "owns_kv_layout", False):
                args = (args[0], *own_layout(ops, args[1], args[2]), *args[3:])
            out = getattr(ops, case.op)(*args, **kwargs)
            if case.inplace_arg is not None:
                out = args[case.inplace_arg]
            out = to_device(out, torch.device("cpu"))
    except Exception as exc:  # a crash is a failure of this case, not of the whole run
        return Verdict(False, detail=f"raised {type(exc).__name__}: {str(exc)[:300]}")
    return (case.judge or close)(case, out)


def own_layout(ops, k_cache: torch.Tensor, v_cache: torch.Tensor | None) -> tuple:
    """A case's caches (written in the default layout [blocks, block_size, g, d]) moved into caches the
    backend allocated in its own layout, every slot written through its own `write_kv`, garbage included."""
    blocks, block_size, heads, k_dim = k_cache.shape
    layout = CacheLayout(heads, k_dim, k_dim if v_cache is None else v_cache.shape[-1], v_cache is not None)
    k_own, v_own = ops.allocate_kv_cache(layout, blocks, block_size, k_cache.dtype)
    slots = torch.arange(blocks * block_size, device=k_cache.device)
    ops.write_kv(k_own, k_cache.flatten(0, 1), slots)
    if v_cache is not None:
        ops.write_kv(v_own, v_cache.flatten(0, 1), slots)
    return k_own, v_own


def _form(out: Any, dtype: torch.dtype, shape: tuple) -> str:
    """'' when out is a tensor of this dtype and shape, else what is wrong."""
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    if out.dtype != dtype:
        return f"returned {out.dtype}, contract requires {dtype}"
    if tuple(out.shape) != tuple(shape):
        return f"returned shape {list(out.shape)}, contract requires {list(shape)}"
    return ""


def close(case: Case, out: Any) -> Verdict:
    ref = getattr(oracle, case.op)(*case.args, **case.kwargs)
    wrong = _form(out, case.dtype, ref.shape)
    if wrong:
        return Verdict(False, detail=wrong)
    c = closeness(out, ref, case.op, case.dtype)
    detail = "" if c.passed else f"max abs error {c.max_abs_err:.3g} exceeds tolerance ({c.ratio:.3g}x allowed)"
    return Verdict(c.passed, c.max_abs_err, c.ratio, c.describe(), detail)


def quantized_close(case: Case, out: Any) -> Verdict:
    """linear with a QuantizedWeight: float64 math on the independently dequantized weight, within the
    activation dtype's linear tolerance plus what quantizing activations as the format's kernels do may add
    (oracle.activation_allowance)."""
    x, weight, bias = case.args
    ref = oracle.linear(x, weight, bias)
    wrong = _form(out, case.dtype, ref.shape)
    if wrong:
        return Verdict(False, detail=wrong)
    c = closeness(out, ref, "linear", case.dtype, oracle.activation_allowance(x, weight))
    detail = "" if c.passed else f"max abs error {c.max_abs_err:.3g} exceeds tolerance ({c.ratio:.3g}x allowed)"
    return Verdict(c.passed, c.max_abs_err, c.ratio, c.describe() + " + activation quantization", detail)


def exact(case: Case, out: Any) -> Verdict:
    ref = getattr(oracle, case.op)(*case.args, **case.kwargs)
    wrong = _form(out, ref.dtype if case.op == "write_kv" else case.dtype, ref.shape)
    if wrong:
        return Verdict(False, detail=wrong)
    c = exactness(out, ref)
    return Verdict(c.passed, c.max_abs_err, c.ratio, "exact", "" if c.passed else "values differ (must be exact)")


def route(case: Case, out: Any) -> Verdict:
    """Chosen experts must be a valid top-k (any order; ties either way), weights close for those experts."""
    logits, top_k, scoring, norm = case.args[:4]
    n_group, topk_group, bias, scaling = (case.kwargs.get(k, d) for k, d in
                                          (("n_group", 1), ("topk_group", 1), ("correction_bias", None),
                                           ("scaling", 1.0)))
    if not isinstance(out, tuple | list) or len(out) != 2:
        return Verdict(False, detail="must return (weights, ids)")
    weights, ids = out
    t = logits.shape[0]
    wrong = _form(weights, torch.float32, (t, top_k)) or _form(ids, torch.int64, (t, top_k))
    if wrong:
        return Verdict(False, detail=wrong)
    scores, choice = oracle.route_scores(logits, scoring, bias)
    allowed = choice
    if n_group > 1 and topk_group < n_group:
        gs = oracle.group_scores(choice, n_group, bias is not None)
        cut = gs.topk(topk_group, dim=-1).values[:, -1:]
        ok_group = gs >= cut - TIE_TOL
        allowed = choice.masked_fill(~ok_group.repeat_interleave(choice.shape[1] // n_group, dim=1), -torch.inf)
        strict = choice.masked_fill(~(gs >= cut).repeat_interleave(choice.shape[1] // n_group, dim=1), -torch.inf)
    else:
        strict = choice
    kth = strict.topk(top_k, dim=-1).values[:, -1]
    ties = 0
    for row in range(t):
        picked = ids[row].tolist()
        if len(set(picked)) != top_k or not all(0 <= e < choice.shape[1] for e in picked):
            return Verdict(False, detail=f"token {row}: expert ids {picked} are not {top_k} distinct experts")
        for e in picked:
            if allowed[row, e] < kth[row] - TIE_TOL:
                return Verdict(False, detail=f"token {row}: expert {e} is not among the top {top_k} "
                                             f"(expected {sorted(strict[row].topk(top_k).indices.tolist())})")
        ties += set(picked) != set(strict[row].topk(top_k).indices.tolist())
    expect = scores.gather(1, ids)
    if norm:
        expect = expect / expect.sum(-1, keepdim=True)
    c = closeness(weights, expect * scaling, "moe_route", torch.float32)
    detail = f"{ties} tied choices resolved differently" if ties else ""
    if not c.passed:
        detail = f"weights: max abs error {c.max_abs_err:.3g} exceeds tolerance ({c.ratio:.3g}x allowed)"
    return Verdict(c.passed, c.max_abs_err, c.ratio, "ids: valid top-k; weights " + c.describe(), detail)


def greedy(case: Case, out: Any) -> Verdict:
    """Every row's id must be an argmax of its logits (any of several tied maxima)."""
    logits = case.args[0]
    wrong = _form(out, torch.int64, (logits.shape[0],))
    if wrong:
        return Verdict(False, detail=wrong)
    best = logits.max(dim=-1).values
    got = logits.gather(1, out[:, None].clamp(0, logits.shape[1] - 1)).squeeze(1)
    bad = [r for r in range(logits.shape[0])
           if not 0 <= int(out[r]) < logits.shape[1] or got[r] < best[r] - TIE_TOL * max(1.0, abs(float(best[r])))]
    if bad:
        r = bad[0]
        return Verdict(False, detail=f"row {r}: picked {int(out[r])}, argmax is {int(logits[r].argmax())}")
    return Verdict(True, 0.0, 0.0, "argmax (ties allowed)")


def distribution(case: Case, out: Any) -> Verdict:
    """All rows repeat one distribution: no draws outside its support, frequencies within 5 sigma."""
    logits, temperature, top_p, top_k = case.args[:4]
    wrong = _form(out, torch.int64, (logits.shape[0],))
    if wrong:
        return Verdict(False, detail=wrong)
    p = oracle.sample_support(logits[0], float(temperature[0]), float(top_p[0]), int(top_k[0]))
    n = out.numel()
    if bool(((out < 0) | (out >= p.numel())).any()):
        return Verdict(False, detail="drew an id outside the vocabulary")
    freq = torch.bincount(out, minlength=p.numel()).double() / n
    outside = float(freq[p == 0].sum())
    if outside > 0:
        return Verdict(False, detail=f"{outside:.1%} of draws fell outside the top-k/top-p support")
    sigma = (p * (1 - p) / n).sqrt()
    ratio = float(((freq - p).abs() / (5 * sigma + 1e-3)).max())
    err = float((freq - p).abs().max())
    detail = "" if ratio <= 1 else f"frequencies {freq.tolist()} differ from {p.tolist()}"
    return Verdict(ratio <= 1, err, ratio, f"frequencies within 5 sigma (n={n})", detail)
