"""The chip and system catalog: one TOML file per chip or system, every figure with its source and tag.

Spec-sheet figures live here; measured efficiencies (what fraction of a peak real kernels reach) are kept
apart, in calibration profiles.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources

from modelchip.errors import ModelchipError, unknown
from modelchip.spec import dtypes

TAGS = ("P", "S", "D", "UNVERIFIED")


@dataclass(frozen=True)
class Figure:
    value: float
    source: str = ""
    tag: str = "UNVERIFIED"
    source_id: str = ""  # a short name of the publication, for leave-one-source-out validation

    @property
    def verified(self) -> bool:
        return self.tag != "UNVERIFIED"


@dataclass(frozen=True)
class Link:
    name: str = ""
    bandwidth: Figure | None = None  # per chip, per direction, bytes/s
    usable_bandwidth: Figure | None = None  # measured, where published
    collective_latency: Figure | None = None  # fixed seconds per collective (small-message time), where published

    def figures(self, prefix: str) -> dict[str, Figure]:
        """This link's figures that the catalog gives, named `prefix.field`."""
        named = {"bandwidth": self.bandwidth, "usable_bandwidth": self.usable_bandwidth,
                 "collective_latency": self.collective_latency}
        return {f"{prefix}.{k}": v for k, v in named.items() if v is not None}

    @property
    def effective(self) -> float | None:
        fig = self.usable_bandwidth or self.bandwidth
        return fig.value if fig else None


@dataclass(frozen=True)
class Chip:
    id: str
    name: str
    vendor: str
    kind: str = "gpu"
    # the microarchitecture (NVIDIA Hopper, Ascend DaVinci): kernel efficiency tables measured on one chip of an
    # architecture apply to its siblings (spec/catalog/kernels.toml)
    arch: str = ""
    status: str = "ok"
    notes: str = ""
    flops: dict[str, Figure] = field(default_factory=dict)
    memory_capacity: Figure | None = None
    memory_bandwidth: Figure | None = None
    scale_up: Link = Link()
    scale_out: Link = Link()
    # the link to the host CPU's memory (NVLink-C2C on Grace superchips) and that memory per chip: where weights
    # that do not fit are offloaded, they stream over this link every forward
    host_link: Link = Link()
    host_memory: Figure | None = None
    # devices the runtime addresses in one package: an Atlas A3's 910C is two NPUs to npu-smi, torch_npu and HCCL,
    # one per die, each its own data-parallel attention and expert-parallel rank (kernel tables measured per
    # rank, such as CloudMatrix's dispatch times per die, hold at a device's share of the chip's tokens)
    devices: int = 1
    tdp: Figure | None = None
    price: Figure | None = None  # USD per hour

    def peak(self, dtype: str) -> float | None:
        """Dense peak FLOP/s for a compute dtype; bf16 and fp16 stand in for each other when one is missing."""
        dtype = dtypes.canonical(dtype)
        fig = self.flops.get(dtype)
        if fig is None and dtype in ("bf16", "fp16"):
            fig = self.flops.get("fp16" if dtype == "bf16" else "bf16")
        return fig.value if fig else None

    @property
    def has_fp8(self) -> bool:
        return "fp8" in self.flops

    @property
    def bandwidth(self) -> float | None:
        return self.memory_bandwidth.value if self.memory_bandwidth else None

    @property
    def usd_per_hour(self) -> float | None:
        return self.price.value if self.price else None

    def figures(self) -> dict[str, Figure]:
        """Every figure by a readable name, for listings and for flagging UNVERIFIED ones."""
        out = {f"flops.{k}": v for k, v in self.flops.items()}
        memory = {"memory.capacity": self.memory_capacity, "memory.bandwidth": self.memory_bandwidth}
        rest = {"power.tdp": self.tdp, "price.usd_per_hour": self.price}
        out.update({k: v for k, v in memory.items() if v is not None})
        out |= self.scale_up.figures("scale_up") | self.scale_out.figures("scale_out") | self.host_link.figures("host")
        if self.host_memory is not None:
            out["host.memory"] = self.host_memory
        return out | {k: v for k, v in rest.items() if v is not None}

    def with_price(self, usd_per_hour: float) -> Chip:
        if usd_per_hour <= 0:
            raise ModelchipError(f"price for {self.id} must be positive, got {usd_per_hour}")
        return replace(self, price=Figure(usd_per_hour, "user override", "P"))


@dataclass(frozen=True)
class System:
    id: str
    name: str
    chip: Chip
    chips: int
    scale_up_domain: int
    notes: str = ""
    scale_up: Link = Link()
    scale_out: Link = Link()
    power: Figure | None = None
    totals: dict[str, Figure] = field(default_factory=dict)

    @property
    def scale_up_bandwidth(self) -> float | None:
        return self.scale_up.effective or self.chip.scale_up.effective

    @property
    def scale_out_bandwidth(self) -> float | None:
        return self.scale_out.effective or self.chip.scale_out.effective

    @property
    def scale_up_latency(self) -> Figure | None:
        """Fixed time of one collective inside the scale-up domain: the system's figure, else the chip's."""
        return self.scale_up.collective_latency or self.chip.scale_up.collective_latency

    def figures(self) -> dict[str, Figure]:
        """The system's own figures (its chip's are listed with the chip)."""
        out = self.scale_up.figures("scale_up") | self.scale_out.figures("scale_out")
        if self.power is not None:
            out["power.total"] = self.power
        return out | {f"totals.{k}": v for k, v in self.totals.items()}


def _figure(raw, where: str) -> Figure | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "value" not in raw:
        raise ModelchipError(f"{where}: a figure must be a table with value, source and tag")
    tag = str(raw.get("tag", "UNVERIFIED"))
    if tag not in TAGS:
        raise ModelchipError(f"{where}: tag {tag!r} is not one of {', '.join(TAGS)}")
    return Figure(float(raw["value"]), str(raw.get("source", "")), tag, str(raw.get("source_id", "")))


def _link(raw: dict | None, where: str) -> Link:
    raw = raw or {}
    return Link(
        name=str(raw.get("link", "")),
        bandwidth=_figure(raw.get("bandwidth"), f"{where}.bandwidth"),
        usable_bandwidth=_figure(raw.get("usable_bandwidth"), f"{where}.usable_bandwidth"),
        collective_latency=_figure(raw.get("collective_latency"), f"{where}.collective_latency"),
    )


def _devices(raw, where: str) -> int:
    if not isinstance(raw, int) or raw < 1:
        raise ModelchipError(f"{where}: devices must be a positive integer, got {raw!r}")
    return raw


def chip_from_toml(data: dict, where: str = "chip") -> Chip:
    try:
        flops = {dtypes.canonical(k): _figure(v, f"{where}.flops.{k}") for k, v in data.get("flops", {}).items()}
        memory = data.get("memory", {})
        return Chip(
            id=data["id"],
            name=data.get("name", data["id"]),
            vendor=data.get("vendor", ""),
            kind=data.get("kind", "gpu"),
            arch=str(data.get("arch", "")),
            status=data.get("status", "ok"),
            notes=data.get("notes", ""),
            flops=flops,
            memory_capacity=_figure(memory.get("capacity"), f"{where}.memory.capacity"),
            memory_bandwidth=_figure(memory.get("bandwidth"), f"{where}.memory.bandwidth"),
            scale_up=_link(data.get("scale_up"), f"{where}.scale_up"),
            scale_out=_link(data.get("scale_out"), f"{where}.scale_out"),
            host_link=_link(data.get("host"), f"{where}.host"),
            host_memory=_figure(data.get("host", {}).get("memory"), f"{where}.host.memory"),
            devices=_devices(data.get("devices", 1), where),
            tdp=_figure(data.get("power", {}).get("tdp"), f"{where}.power.tdp"),
            price=_figure(data.get("price", {}).get("usd_per_hour"), f"{where}.price.usd_per_hour"),
        )
    except KeyError as exc:
        raise ModelchipError(f"{where} is missing field {exc.args[0]!r}") from exc


def _read_folder(name: str) -> dict[str, tuple[dict, str]]:
    out = {}
    for entry in resources.files("modelchip.spec").joinpath("catalog", name).iterdir():
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            out[data["id"]] = (data, f"catalog/{name}/{entry.name}")
    return out


@cache
def chips() -> dict[str, Chip]:
    """Every chip in the catalog, by id."""
    return {cid: chip_from_toml(data, where) for cid, (data, where) in _read_folder("chips").items()}


@cache
def systems() -> dict[str, System]:
    """Every system in the catalog, by id."""
    table = chips()
    out = {}
    for sid, (data, where) in _read_folder("systems").items():
        if data.get("chip") not in table:
            raise ModelchipError(f"{where}: chip {data.get('chip')!r} is not in the chip catalog")
        out[sid] = System(
            id=sid,
            name=data.get("name", sid),
            chip=table[data["chip"]],
            chips=int(data["chips"]),
            scale_up_domain=int(data.get("scale_up_domain", data["chips"])),
            notes=data.get("notes", ""),
            scale_up=_link(data.get("scale_up"), f"{where}.scale_up"),
            scale_out=_link(data.get("scale_out"), f"{where}.scale_out"),
            power=_figure(data.get("power", {}).get("total"), f"{where}.power.total"),
            totals={k: _figure(v, f"{where}.totals.{k}") for k, v in data.get("totals", {}).items()},
        )
    return out


def get_chip(chip_id: str) -> Chip:
    """A chip by id (case-insensitive), with near matches in the error."""
    table = chips()
    key = chip_id.strip().lower()
    if key in table:
        return table[key]
    raise unknown("chip", chip_id, table)


def parse_prices(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """['h800=2.5', ...] -> {'h800': 2.5}, checking ids and values."""
    out = {}
    for item in items:
        cid, sep, value = item.partition("=")
        if not sep:
            raise ModelchipError(f"price {item!r} is not of the form CHIP=USD_PER_HOUR")
        chip = get_chip(cid)
        try:
            out[chip.id] = float(value)
        except ValueError as exc:
            raise ModelchipError(f"price {item!r}: {value!r} is not a number") from exc
        if out[chip.id] <= 0:
            raise ModelchipError(f"price {item!r} must be positive")
    return out
