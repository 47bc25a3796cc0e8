"""Finding a model's config.json: a built-in preset, a file, a checkpoint directory, or a hub id.

A model reference may carry what-if overrides after a colon: `step3:attention=mha,num_attention_groups=8`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path

from modelchip.errors import ModelchipError, unknown
from modelchip.spec import dtypes, families, gguf_config, overrides
from modelchip.spec.model import ModelSpec
from modelchip.spec.validate import validate


@dataclass(frozen=True)
class Preset:
    id: str
    name: str
    hf_repo: str
    source: str
    confidence: str
    notes: str
    config: dict
    pinned_kv_dtype: dict  # {"global_attention": "bf16", "source": ...}: KV formats its deployments keep


@cache
def presets() -> dict[str, Preset]:
    """Built-in model presets, keyed by id (data files in modelchip/spec/presets)."""
    out = {}
    for entry in resources.files("modelchip.spec").joinpath("presets").iterdir():
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text())
        out[data["id"]] = Preset(
            id=data["id"],
            name=data.get("name", data["id"]),
            hf_repo=data.get("hf_repo", ""),
            source=data.get("source", ""),
            confidence=data.get("confidence", "UNVERIFIED"),
            notes=data.get("notes", ""),
            config=data["config"],
            pinned_kv_dtype=data.get("pinned_kv_dtype", {}),
        )
    return out


def split_reference(ref: str) -> tuple[str, list[str]]:
    """'id:key=v,key2=w' -> ('id', ['key=v', 'key2=w']); paths with colons but no '=' stay whole."""
    base, sep, rest = ref.rpartition(":")
    if sep and "=" in rest and base:
        return base, [item for item in _split_items(rest) if item]
    return ref, []


def _split_items(text: str) -> list[str]:
    # commas inside [..] belong to list values (moe_layers=[1,3]); split only at top level
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return items


def load_config(ref: str) -> tuple[dict, str, str]:
    """(config dict, display name, source) for a preset id, a config file, a directory, or a hub id."""
    table = presets()
    if ref in table:
        p = table[ref]
        return p.config, p.id, p.source
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ModelchipError(f"directory {ref!r} has no config.json")
    if path.is_file():
        if path.suffix == ".gguf" or gguf_config.is_gguf(path):
            return gguf_config.read_config(path), path.stem, str(path)
        try:
            name = path.parent.name if path.name == "config.json" else path.stem
            return json.loads(path.read_text()), name, str(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelchipError(f"{path} is neither a config.json (not valid JSON: {exc}) nor a GGUF file") \
                from exc
    if is_hub_id(ref):
        return _from_hub(ref), ref.split("/")[1], f"https://huggingface.co/{ref}"
    raise unknown("model", ref, table)


# owner/name as the hub spells repo ids: letters, digits, '-', '_', '.' (so Qwen/Qwen3-0.6B is one)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_FILE_SUFFIXES = (".json", ".gguf", ".safetensors", ".bin")


def is_hub_id(ref: str) -> bool:
    """True for what can only be a hub repo id (owner/name); a missing local file path is not one."""
    return bool(_HUB_ID.fullmatch(ref)) and not ref.endswith(_FILE_SUFFIXES) and ".." not in ref


def _from_hub(repo_id: str) -> dict:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ModelchipError(
            f"{repo_id!r} looks like a hub id, but huggingface_hub is not installed "
            "(pip install 'modelchip[hub]'), and it is not a preset or a local path"
        ) from exc
    try:
        file = hf_hub_download(repo_id, "config.json", local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except Exception as exc:  # hub errors come in many classes; all mean "could not get it"
        raise ModelchipError(
            f"could not fetch config.json of {repo_id!r} from the hub ({type(exc).__name__}); "
            "pass a local config.json or checkpoint directory instead"
        ) from exc
    return json.loads(Path(file).read_text())


def pin_kv_dtype(spec: ModelSpec, dtype: str) -> ModelSpec:
    """Fix the KV format of the global softmax-attention layers of a hybrid model (its windowed and linear
    layers keep the deployment's choice)."""
    dtype = dtypes.canonical(dtype)
    layers = tuple(
        replace(layer, attention=replace(layer.attention, kv_dtype=dtype))
        if layer.attention.kind != "linear" and not layer.attention.window else layer
        for layer in spec.layers
    )
    return replace(spec, layers=layers)


def load_model(ref: str, sets: list[str] | tuple[str, ...] = ()) -> ModelSpec:
    """A ModelSpec from a model reference, with `sets` (key=value) and inline overrides applied."""
    base, inline = split_reference(ref)
    config, name, source = load_config(base)
    items = [*inline, *sets]
    config, spec_level = overrides.apply(config, items)
    spec = families.read(config, name)
    pinned = presets()[base].pinned_kv_dtype.get("global_attention") if base in presets() else None
    if pinned:
        spec = pin_kv_dtype(spec, pinned)
    spec = validate(overrides.apply_spec(spec, spec_level), families.FIELD_ALIASES.get(spec.family))
    if items and "attention" not in spec_level:
        spec = replace(spec, name=f"{name} [{', '.join(items)}]")
    return replace(spec, source=source)
