"""Structured outputs in the engine (no server): every sampled token keeps the output valid, the request ends when
the grammar is complete, and end-of-sequence is masked until then. Outputs are checked with jsonschema / re,
independently of llguidance."""

from __future__ import annotations

import json
import re

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from modelchip.engine import SamplingParams  # noqa: E402
from modelchip.engine.sampling_params import StructuredOutputsParams  # noqa: E402
from modelchip.engine.structured_output import StructuredOutputManager  # noqa: E402
from modelchip.errors import ModelchipError  # noqa: E402

# bounded on purpose: the tiny model is random, and only the grammar keeps it on track
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "colour", "count", "tags"],
          "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green", "blue"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 999},
                         "tags": {"type": "array", "maxItems": 2, "items": {"enum": ["a", "b"]}}}}


def test_params_take_exactly_one_constraint():
    with pytest.raises(ModelchipError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(ModelchipError, match="exactly one"):
        StructuredOutputsParams(json={"type": "object"}, regex="a+")
    with pytest.raises(ModelchipError, match="not valid JSON"):
        StructuredOutputsParams(json="{nope")
    with pytest.raises(ModelchipError, match="choice"):
        StructuredOutputsParams(choice=[])
    assert StructuredOutputsParams(json='{"type": "object"}').json == {"type": "object"}
    with pytest.raises(ModelchipError, match="structured_outputs"):
        SamplingParams(structured_outputs={"json": {}})


def test_invalid_constraints_name_the_problem(tiny_llm):
    manager = StructuredOutputManager(tiny_llm.tokenizer, tiny_llm.vocab_size, tiny_llm.eos_ids)
    with pytest.raises(ModelchipError, match="invalid structured output"):
        manager.check(StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "nope"}}}))
    with pytest.raises(ModelchipError, match="invalid structured output"):
        manager.check(StructuredOutputsParams(regex="(unclosed"))
    with pytest.raises(ModelchipError, match="invalid structured output"):
        manager.check(StructuredOutputsParams(grammar="start: undefined_rule"))


def test_generate_follows_the_schema(tiny_llm):
    constraint = StructuredOutputsParams(json=SCHEMA)
    params = [SamplingParams(max_tokens=200, temperature=0, structured_outputs=constraint)] + \
        [SamplingParams(max_tokens=200, temperature=1.0, seed=s, structured_outputs=constraint) for s in range(4)]
    outs = tiny_llm.generate(["Numbers: 0123", "The engine", "Blocks hold", "Unicode", "Stop strings"], params)
    for out in outs:
        assert out.finish_reason == "stop", out
        jsonschema.validate(json.loads(out.text), SCHEMA)
    # unconstrained, the same random model writes no JSON at all
    free = tiny_llm.generate("Numbers: 0123", max_tokens=30, temperature=0)[0].text
    with pytest.raises(ValueError):
        json.loads(free)


def test_regex_choice_and_grammar(tiny_llm):
    outs = tiny_llm.generate(["The engine"] * 3, [
        SamplingParams(max_tokens=40, temperature=1.0, seed=3, structured_outputs=StructuredOutputsParams(
            regex=r"[A-Z]{3}-[0-9]{4}")),
        SamplingParams(max_tokens=40, temperature=0, structured_outputs=StructuredOutputsParams(
            choice=["café", "Straße", "日本語"])),
        SamplingParams(max_tokens=40, temperature=1.0, seed=4, structured_outputs=StructuredOutputsParams(
            grammar='start: "x=" NUM ";"\nNUM: /[0-9]{1,3}/'))])
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{4}", outs[0].text), outs[0].text
    assert outs[1].text in ("café", "Straße", "日本語")
    assert re.fullmatch(r"x=[0-9]{1,3};", outs[2].text), outs[2].text
    assert all(o.finish_reason == "stop" for o in outs)


def test_eos_masked_until_the_grammar_is_complete(tiny_llm):
    torch = pytest.importorskip("torch")
    tok = tiny_llm.tokenizer
    manager = StructuredOutputManager(tok, tiny_llm.vocab_size, tiny_llm.eos_ids)
    proc = manager.processor(StructuredOutputsParams(json=SCHEMA))
    text = '{"ok": true, "colour": "green", "count": 12, "tags": ["a", "b"]}'
    ids = tok.encode(text, add_special_tokens=False)
    eos = min(tiny_llm.eos_ids)
    for i, t in enumerate(ids):
        row = proc(ids[:i], torch.zeros(tiny_llm.vocab_size))
        assert row[t] == 0, f"token {i} of a valid document was masked"
        assert row[eos] == float("-inf"), f"end-of-sequence allowed after {tok.decode(ids[:i])!r}"
        allowed = (row == 0).nonzero().flatten().tolist()
        # every allowed token keeps the text a prefix of some valid document: spot-check that none opens a
        # second object or leaves the schema's alphabet at the first step
        if i == 0:
            assert all(tok.decode([a]).startswith("{") for a in allowed), [tok.decode([a]) for a in allowed]
        assert not proc.is_finished
        proc.accept_token(t)
    assert proc.is_finished
    row = proc(ids, torch.zeros(tiny_llm.vocab_size))
    assert (row == 0).nonzero().flatten().tolist() == sorted(tiny_llm.eos_ids)
