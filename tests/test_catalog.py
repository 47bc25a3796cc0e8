"""The chip and system catalog: required entries, the paper's Table 4, sources and tags, bad data."""

import json
import re
import tomllib
from pathlib import Path

import pytest

from modelchip.errors import ModelchipError
from modelchip.spec import chips as catalog


def test_required_chips_and_systems():
    ids = set(catalog.chips())
    for cid in ("h800", "h20", "a800", "h100", "h200", "b200", "gb200", "ascend-910b", "ascend-910c"):
        assert cid in ids
    sys_ids = set(catalog.systems())
    for sid in ("cloudmatrix-384", "gb200-nvl72", "hgx-h800", "hgx-h20", "hgx-a800", "atlas-800-a2",
                "metax-supernode"):
        assert sid in sys_ids


@pytest.mark.parametrize("cid,price,bf16,fp8,bw", [
    ("h800", 2.00, 9.89e14, 1.98e15, 3.35e12),
    ("h20", 0.80, 1.48e14, 2.96e14, 4.00e12),
    ("a800", 0.75, 3.12e14, None, 2.00e12),
    ("ascend-910b", 0.67, 2.80e14, None, 1.60e12),
])
def test_step3_table_4(cid, price, bf16, fp8, bw):
    chip = catalog.get_chip(cid)
    assert chip.usd_per_hour == price
    assert chip.peak("bf16") == bf16
    assert chip.peak("fp8") == fp8
    assert chip.bandwidth == bw


def test_every_figure_has_source_and_tag():
    for chip in catalog.chips().values():
        for name, fig in chip.figures().items():
            assert fig.source, f"{chip.id} {name} has no source"
            assert fig.tag in catalog.TAGS


def test_unverified_chips_are_kept_and_flagged():
    c550 = catalog.get_chip("metax-c550")
    assert c550.status == "unverified"
    assert catalog.systems()["metax-supernode"].chips == 128


def test_system_scale_up_domains():
    s = catalog.systems()
    assert s["cloudmatrix-384"].scale_up_domain == 384 and s["cloudmatrix-384"].chip.id == "ascend-910c"
    assert s["gb200-nvl72"].scale_up_domain == 72
    assert s["hgx-h800"].scale_up_bandwidth == pytest.approx(1.6e11)  # DeepSeek's measured usable NVLink


def test_unknown_chip_near_match():
    with pytest.raises(ModelchipError, match="did you mean.*h800"):
        catalog.get_chip("h80")


def test_price_override():
    assert catalog.parse_prices(["h800=2.5"]) == {"h800": 2.5}
    with pytest.raises(ModelchipError, match="positive"):
        catalog.parse_prices(["h800=-1"])
    with pytest.raises(ModelchipError, match="CHIP=USD"):
        catalog.parse_prices(["h800"])


def test_bad_figure_is_rejected():
    with pytest.raises(ModelchipError, match="tag"):
        catalog.chip_from_toml({"id": "x", "flops": {"bf16": {"value": 1, "tag": "maybe"}}})
    with pytest.raises(ModelchipError, match="value"):
        catalog.chip_from_toml({"id": "x", "flops": {"bf16": 1e14}})


# -- every source resolves ----------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "src" / "modelchip" / "spec"
URL = re.compile(r"https?://[^\s)]+")
ARXIV = re.compile(r"arXiv[: ]?\d{4}\.\d{4,5}", re.IGNORECASE)
REPO_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)+\.\w+")
NOTES = re.compile(r"reference [\w-]+\.md")  # the project's private notes: not in the repository, cited by nobody
def _sources(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "source" and isinstance(value, str):
                yield value
            else:
                yield from _sources(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _sources(value)


def _catalog_sources():
    for path in sorted(DATA.rglob("*.toml")) + sorted(DATA.rglob("*.json")):
        data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        if path.name == "deployments.toml":
            # a measured point's `source` describes the setup; its citation is its [[source]] entry's title
            declared = {src["id"]: src["title"] for src in data["source"]}
            for point in data["point"]:
                yield path, declared.get(point.get("source_id"), point["source"])
            continue
        for source in _sources(data):
            yield path, source


def _resolves(source: str) -> bool:
    if NOTES.search(source):
        return False
    return bool(URL.search(source) or ARXIV.search(source)
                or any((REPO / p).is_file() for p in REPO_PATH.findall(source)))


def test_every_catalog_source_resolves():
    found = list(_catalog_sources())
    read = {path.parent.name if path.parent.name != "catalog" else path.name for path, _ in found}
    assert {"chips", "systems", "presets", "efficiency.toml", "deployments.toml"} <= read  # all were read
    bad = [f"{path.relative_to(DATA)}: {source[:100]}" for path, source in found if not _resolves(source)]
    assert not bad, "sources without a URL, an arXiv id or a path in the repository:\n" + "\n".join(bad)


def test_resolution_rules():
    # what counts as a resolvable citation, on made-up strings
    assert _resolves("NVIDIA H100 (https://www.nvidia.com/en-us/data-center/h100/): 989 TFLOPS")
    assert _resolves("Step-3 paper (arXiv 2507.19427) Table 4")
    assert _resolves("docs/validation.md, the DeepSeek rows")
    assert not _resolves("NVIDIA datasheet (reference hardware.md): 80 GB")
    assert not _resolves("reference hardware.md: see https://example.com")
    assert not _resolves("DeepSeek-V3 technical report: 160 GB/s")
    assert not _resolves("docs/no-such-file.md")
