"""What-if overrides: `--set key=value` on a model's config, or on its attention design.

A key is a config.json field of the language model (dotted for nested fields, e.g. rope_scaling.factor), a
common HF name that the family spells its own way (num_key_value_heads for Step-3's num_attention_groups), or
`attention`, which redesigns every softmax-attention layer (gqa, mha, mqa, mfa, mfa-kr; mla only if the
model already uses MLA).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

from modelchip.errors import ModelchipError, near
from modelchip.spec import families
from modelchip.spec.model import AttentionSpec, ModelSpec

ATTENTION_DESIGNS = ("gqa", "mha", "mqa", "mfa", "mfa-kr", "mla")
SPEC_FIELDS = {"attention": "redesign attention: " + " | ".join(ATTENTION_DESIGNS)}
# Optional fields a family reader understands even when the config leaves them out.
OPTIONAL_FIELDS = {"head_dim", "num_key_value_heads", "tie_word_embeddings"}


def parse(item: str) -> tuple[str, object]:
    """'key=value' -> (key, value); the value is read as JSON when it parses (numbers, true, null, lists)."""
    if "=" not in item:
        raise ModelchipError(f"override {item!r} is not of the form key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise ModelchipError(f"override {item!r} has an empty key")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
    return key, value


def apply(config: dict, items: list[str] | tuple[str, ...]) -> tuple[dict, dict]:
    """Apply config-field overrides; return (new config, spec-level overrides still to apply)."""
    if not items:
        return config, {}
    config = copy.deepcopy(config)
    text, model_type = families.text_config(config)
    if text is not config:  # write into the nested text_config of a multimodal wrapper
        config["text_config"] = text
    aliases = families.FIELD_ALIASES.get(model_type, {})
    spec_level: dict = {}
    for item in items:
        key, value = parse(item)
        if key in SPEC_FIELDS:
            spec_level[key] = value
            continue
        key = aliases.get(key, key)
        target, leaf = _walk(text, key)
        if leaf not in target and not (target is text and leaf in OPTIONAL_FIELDS):
            choices = list(text) + list(aliases) + list(SPEC_FIELDS)
            close = near(key, choices)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ModelchipError(f"cannot override {key!r}: model_type {model_type!r} config has no such field{hint}")
        _check_type(key, target.get(leaf), value)
        target[leaf] = value
    return config, spec_level


def _check_type(key: str, old, new) -> None:
    """A number stays a number: finite, and whole where the config has a whole number (heads, sizes; JSON
    cannot tell an integer field from a real one written without a fraction, so 1.5e6 passes for rope_theta)."""
    if old is None or new is None or isinstance(old, bool) or not isinstance(old, int | float):
        return
    number = isinstance(new, int | float) and not isinstance(new, bool)
    if not number or not math.isfinite(new):
        raise ModelchipError(f"cannot override {key!r} with {new!r}: it must be a finite number (the config has "
                             f"{old!r})")
    if isinstance(old, int) and new != int(new):
        raise ModelchipError(f"cannot override {key!r} with {new!r}: it must be a whole number (the config has "
                             f"{old!r})")


def _walk(data: dict, dotted: str) -> tuple[dict, str]:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ModelchipError(f"cannot override {dotted!r}: {part!r} is not a nested field of the config")
        node = child
    return node, parts[-1]


def redesign_attention(spec: ModelSpec, design: str) -> ModelSpec:
    """Swap the attention design of every softmax-attention layer, keeping heads and head dims."""
    design = str(design).lower()
    if design not in ATTENTION_DESIGNS:
        raise ModelchipError(f"unknown attention design {design!r}; choose from {', '.join(ATTENTION_DESIGNS)}")
    layers = []
    for layer in spec.layers:
        a = layer.attention
        if a.kind == "linear":
            layers.append(layer)
            continue
        layers.append(replace(layer, attention=_convert(a, design)))
    return replace(spec, layers=tuple(layers), name=f"{spec.name} [attention={design}]")


def _convert(a: AttentionSpec, design: str) -> AttentionSpec:
    if design == "mla":
        if a.kind != "mla":
            raise ModelchipError(
                "attention=mla needs MLA dimensions (kv_lora_rank, qk_rope_head_dim); start from an MLA model"
            )
        return a
    if a.kind == "mla":  # back to per-head K/V with MLA's head dims
        a = replace(a, kind="gqa", kv_lora_rank=0, qk_rope_head_dim=0, q_lora_rank=0)
    if design in ("gqa", "mha", "mqa"):
        kv = {"gqa": a.num_kv_heads, "mha": a.num_heads, "mqa": 1}[design]
        return replace(a, kind="gqa", num_kv_heads=kv, q_lora_rank=0)
    kv = a.num_kv_heads if a.kind in ("mfa", "mfa-kr") else 1
    return replace(a, kind=design, num_kv_heads=kv, v_head_dim=a.head_dim)


def apply_spec(spec: ModelSpec, spec_level: dict) -> ModelSpec:
    if "attention" in spec_level:
        spec = redesign_attention(spec, spec_level["attention"])
    return spec
