"""Backend registry: built-in backends plus out-of-tree ones registered under the entry point group
`modelchip.backends` (value: a class or factory taking `device`). A backend implements any subset of the
contract's ops; the rest run on the reference backend, and every such call is counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from importlib.metadata import entry_points

import torch

from modelchip.errors import ModelchipError, unknown
from modelchip.runtime.backends.cpu import CPUBackend
from modelchip.runtime.backends.reference import ReferenceBackend
from modelchip.runtime.contract import CONTRACT_VERSION, OPS, SUPPORTED_CONTRACT_VERSIONS, Communicator
from modelchip.runtime.distributed.communicator import SingleProcess, make_communicator

ENTRY_POINT_GROUP = "modelchip.backends"
# contract v2, each with the reference's default
HOOKS = ("allocate_kv_cache", "synchronize", "capture_step", "fuse_decoder_layers")
BUILTIN: dict[str, Callable] = {"reference": ReferenceBackend, "cpu": CPUBackend}


def available() -> dict[str, Callable]:
    """Backend factories by name: built-ins, then plugins (a plugin cannot shadow a built-in)."""
    out = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep)
    return out


class Ops:
    """What model code calls: each contract op bound to the backend, or to the reference with a count.

    Each op is an attribute typed with its contract signature (contract.Backend documents them) and bound once
    here, so a call costs what a call to the backend's own method costs.
    """

    name: str
    device: torch.device
    backend: object
    fallbacks: Counter[str]
    prepares_weights: bool
    quantized_formats: frozenset[str]
    prepare_linear: Callable[[torch.Tensor], object]
    embedding: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    linear: Callable[..., torch.Tensor]  # (x, weight or prepared handle, bias=None)
    batched_linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    rotary_embedding: Callable[..., torch.Tensor]  # (x, cos, sin, interleaved=False)
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    write_kv: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
    paged_attention: Callable[..., torch.Tensor]  # (q, k_cache, v_cache, meta, scale, v_dim=None, window=0)
    moe_route: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (logits, top_k, scoring, norm_topk_prob, ...)
    moe_experts: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    sample: Callable[..., torch.Tensor]  # (logits, temperature, top_p, top_k, generator=None)
    comm: Communicator  # collectives (contract v2); the identity until `attach_group`
    # contract v2 hooks (not ops: no fallback count); the backend's own, else the reference's default
    allocate_kv_cache: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # (layout, blocks, block_size, dtype)
    synchronize: Callable[[], None]
    capture_step: Callable[..., Callable[[], torch.Tensor] | None]  # (step, batch_size)
    fuse_decoder_layers: Callable[..., Callable[..., torch.Tensor] | None]  # (list of DecoderLayerWeights)
    owns_kv_layout: bool  # the backend allocates its KV cache itself
    captures_steps: bool  # the backend has its own capture_step (the engine pads decode steps for it)

    def __init__(self, backend, reference: ReferenceBackend):
        self.backend = backend
        self.name = backend.name
        self.device = reference.device
        self.fallbacks: Counter[str] = Counter()
        for op in OPS:
            impl = getattr(backend, op, None)
            setattr(self, op, impl if impl is not None else self._fallback(op, getattr(reference, op)))
        prepare = getattr(backend, "prepare_linear", None)
        if prepare is not None and getattr(backend, "linear", None) is None:
            raise ModelchipError(f"backend {self.name!r} prepares linear weights but has no `linear` to read them; "
                                 "the reference cannot (implement linear, or drop prepare_linear)")
        self.prepares_weights = prepare is not None
        self.prepare_linear = prepare if prepare is not None else _unchanged
        # QuantizedWeight formats `linear` takes (after prepare_linear, when the backend prepares weights); a
        # backend that does not say takes none, and models dequantize for it at load (counted). Without its
        # own linear, the reference's runs, which takes every format.
        owner = backend if getattr(backend, "linear", None) is not None else reference
        self.quantized_formats = frozenset(getattr(owner, "quantized_formats", ()))
        self.comm = SingleProcess()
        for hook in HOOKS:
            setattr(self, hook, getattr(backend, hook, None) or getattr(reference, hook))
        # its own layout: an allocate_kv_cache that is not the reference's (the cpu backend inherits that one)
        self.owns_kv_layout = _own(backend, "allocate_kv_cache")
        self.captures_steps = _own(backend, "capture_step")
        lacking = [op for op in ("write_kv", "paged_attention") if getattr(backend, op, None) is None]
        if self.owns_kv_layout and lacking:
            raise ModelchipError(f"backend {self.name!r} allocates its own KV cache but has no "
                                 f"{' or '.join(lacking)}; the reference cannot read its layout (implement them, "
                                 "or drop allocate_kv_cache)")
        self.layout = None  # how the ranks divide the model (distributed/layout.py); None: one process

    def attach_group(self, group=None, layout=None) -> None:
        """Run collectives on a torch.distributed process group (None: the default group): the backend's own
        communicator if it has `make_communicator`, else the torch.distributed one. Before building a model.
        `layout` (a ParallelLayout) says how the model is divided; None: tensor parallel over the group."""
        self.comm = make_communicator(self.backend, group)
        self.layout = layout

    def _fallback(self, op: str, impl: Callable) -> Callable:
        def call(*args, **kwargs):
            self.fallbacks[op] += 1
            return impl(*args, **kwargs)

        return call

    @property
    def native_ops(self) -> list[str]:
        return [op for op in OPS if getattr(self.backend, op, None) is not None]

    def fallback_report(self) -> dict:
        """Ops this backend lacks and how often each ran on the reference instead."""
        missing = [op for op in OPS if op not in self.native_ops]
        return {"backend": self.name, "missing_ops": missing, "fallback_calls": dict(self.fallbacks)}


def _own(backend, hook: str) -> bool:
    """The backend has `hook` and it is not the reference's default (which the cpu backend inherits)."""
    impl = getattr(type(backend), hook, None) or getattr(backend, hook, None)
    return impl is not None and impl is not getattr(ReferenceBackend, hook)


def _unchanged(weight: torch.Tensor) -> torch.Tensor:
    return weight


# torch's own accelerator modules, each with is_available() and device_count(); other device types come
# from plugins (torch_npu, ...) whose backends check their own devices
_ACCELERATORS = ("cuda", "xpu", "mps")


def check_device(device: str | torch.device) -> torch.device:
    """The torch device `device` names, or a ModelchipError saying why this machine cannot use it (rather
    than the assertion torch raises at the first tensor on a build without that device)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelchipError(f"{str(device)!r} is not a torch device ({exc})") from exc
    if dev.type not in _ACCELERATORS:
        return dev
    module = getattr(torch, dev.type)
    if not module.is_available():
        built = dev.type != "cuda" or torch.version.cuda or torch.version.hip
        why = (f"this torch build ({torch.__version__}) has no CUDA support" if not built
               else f"torch {torch.__version__} sees no {dev.type} device on this machine")
        raise ModelchipError(f"device {str(device)!r} is not available: {why}; use --device cpu, or install a "
                             f"torch build for this accelerator")
    if dev.index is not None and dev.index >= module.device_count():
        raise ModelchipError(f"device {str(device)!r} does not exist: this machine has {module.device_count()} "
                             f"{dev.type} device(s)")
    return dev


def get_backend(name: str = "reference", device: str | torch.device = "cpu") -> Ops:
    """Instantiate a backend by name for a torch device, wrapped so missing ops fall back visibly."""
    device = check_device(device)
    factories = available()
    if name not in factories:
        raise unknown("backend", name, factories)
    factory = factories[name]
    try:
        factory = factory.load() if hasattr(factory, "load") else factory
        backend = factory(device=device)
    except ModelchipError:
        raise
    except Exception as exc:
        raise ModelchipError(f"backend {name!r} failed to start on device {device!r}: {exc}") from exc
    version = getattr(backend, "contract_version", CONTRACT_VERSION)
    if version not in SUPPORTED_CONTRACT_VERSIONS:
        raise ModelchipError(f"backend {name!r} implements contract version {version}, modelchip speaks "
                             f"versions {', '.join(map(str, SUPPORTED_CONTRACT_VERSIONS))}")
    if not hasattr(backend, "name"):
        backend.name = name
    return Ops(backend, ReferenceBackend(device))
