"""Tool calling pieces without a server: the Hermes tool-call parser on hand-written replies (whole, and streamed
in every chunking, which must reassemble to the same calls), the prompt a template with or without tool support
gets, and the grammar that forces valid calls (checked with llguidance's matcher on token ids from the real
tokenizer, against call texts written by hand)."""

from __future__ import annotations

import json
import random

import pytest

from modelchip.errors import ModelchipError
from modelchip.serve.tools import (
    ToolCallParser,
    check_template_format,
    parse_tool_calls,
    render_messages,
    template_renders_tools,
    tool_call_grammar,
)

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}}}
ADD = {"name": "add", "parameters": {"type": "object", "required": ["a", "b"],
                                     "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}

# (reply, expected content, expected [(name, arguments as parsed JSON)])
REPLIES = [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', None,
     [("get_weather", {"city": "Paris"})]),
    ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "Let me check.",
     [("get_weather", {"city": "Oslo", "unit": "c"}), ("add", {"a": 1, "b": 2})]),
    ('<tool_call>{"name":"f","arguments":{"s":"} and </tool_call","n":{"m":[1,{"k":"}"}]}}}</tool_call>', None,
     [("f", {"s": "} and </tool_call", "n": {"m": [1, {"k": "}"}]}})]),
    ('<tool_call>\n{"arguments": {"x": 1}, "name": "swapped"}\n</tool_call>', None, [("swapped", {"x": 1})]),
    ('<tool_call>\n{"name": "cut", "arguments": {"x": "a}b"}', None, [("cut", {"x": "a}b"})]),
    ('<tool_call>\n{"name": "empty", "arguments": {}}\n</tool_call>', None, [("empty", {})]),
    ("No tools needed: 2 < 3 and <tool is not a tag.", "No tools needed: 2 < 3 and <tool is not a tag.", []),
    ("<tool_call>not json</tool_call> then text", "<tool_call>not json</tool_call> then text", []),
    ("  \nplain reply  \n", "  \nplain reply  \n", []),
    ('Ünïcödé 😀 <tool_call>\n{"name": "say", "arguments": {"t": "日本語 😀"}}\n</tool_call>', "Ünïcödé 😀",
     [("say", {"t": "日本語 😀"})]),
]


@pytest.mark.parametrize(("reply", "content", "calls"), REPLIES)
def test_parse_whole_reply(reply, content, calls):
    got_content, got_calls = parse_tool_calls(reply)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got_calls)
    assert len({c["id"] for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize(("reply", "content", "calls"), REPLIES)
def test_streamed_deltas_reassemble(reply, content, calls):
    rng = random.Random(reply)
    whole_content, whole_calls = parse_tool_calls(reply)
    for _ in range(30):
        parser = ToolCallParser()
        text, assembled, pos = "", {}, 0
        while True:
            n = rng.randint(1, 5)
            piece, final = reply[pos:pos + n], pos + n >= len(reply)
            pos += n
            got, deltas = parser.add(piece, final=final)
            text += got
            for d in deltas:
                o = d.openai()
                call = assembled.setdefault(o["index"], {"name": None, "arguments": ""})
                if "id" in o:
                    assert call["name"] is None, "a call's header came twice"
                    call["name"] = o["function"]["name"]
                call["arguments"] += o["function"]["arguments"]
            if final:
                break
        assert (text or None) == (whole_content if whole_content and whole_content.strip() else None) or \
            (not text.strip() and whole_content is None)
        assert [(c["name"], c["arguments"]) for c in assembled.values()] == \
            [(c["function"]["name"], c["function"]["arguments"]) for c in whole_calls]


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# a Hermes-style template written for this test: tools in the system turn, calls as <tool_call> JSON
HERMES = """{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}<tools>
{% for t in tools %}{{ t | tojson }}
{% endfor %}</tools>
Call one with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif %}
{%- for m in messages %}{% if m.role == 'system' and tools %}{% elif m.role == 'assistant' and m.tool_calls %}\
<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
OTHER = ("{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
         "{% for m in messages %}{{ m['content'] }}{% endfor %}")

HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris and Oslo?"},
           {"role": "assistant", "content": "", "tool_calls": [
               {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}},
               {"id": "call_2", "name": "get_weather", "arguments": {"city": "Oslo"}}]},
           {"role": "tool", "content": "21 C", "tool_call_id": "call_1"},
           {"role": "tool", "content": "3 C", "tool_call_id": "call_2"}]
TOOLS = [{"type": "function", "function": WEATHER}]


@pytest.fixture
def tokenizer(tiny_dir):
    from modelchip.runtime.tokenizer import Tokenizer

    def make(template: str) -> Tokenizer:
        tok = Tokenizer.from_dir(tiny_dir)
        tok.chat_template = template
        return tok

    return make


def test_template_without_tools_gets_hermes_text(tokenizer):
    tok = tokenizer(CHATML)
    assert not template_renders_tools(tok)
    check_template_format(tok)
    messages, tools = render_messages(HISTORY, TOOLS, native=False)
    assert tools is None
    prompt = tok.apply_chat_template(messages)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in prompt  # the whole definition, parameters included
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
            '<|im_end|>') in prompt
    # both results in one user turn, in order
    assert ("<|im_start|>user\n<tool_response>\n21 C\n</tool_response>\n<tool_response>\n3 C\n</tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n") in prompt
    assert "<|im_start|>tool" not in prompt


def test_template_with_tools_renders_them_itself(tokenizer):
    tok = tokenizer(HERMES)
    assert template_renders_tools(tok)
    check_template_format(tok)
    messages, tools = render_messages(HISTORY, TOOLS, native=True)
    assert tools == TOOLS
    prompt = tok.apply_chat_template(messages, tools=tools)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n<tools>\n" + json.dumps(TOOLS[0]))
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt  # arguments as an object
    assert "<tool_response>\n3 C\n</tool_response>" in prompt


def test_other_tool_formats_are_refused(tokenizer):
    tok = tokenizer(OTHER)
    assert template_renders_tools(tok)
    with pytest.raises(ModelchipError, match="Hermes"):
        check_template_format(tok)


@pytest.fixture
def ll_tokenizer(tiny_llm):
    from modelchip.engine.structured_output import StructuredOutputManager

    return StructuredOutputManager(tiny_llm.tokenizer, tiny_llm.vocab_size, tiny_llm.eos_ids).ll_tokenizer


def _accepts(ll_tokenizer, tok, grammar: str, text: str) -> bool:
    from llguidance import LLMatcher

    matcher = LLMatcher(ll_tokenizer, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(tok.encode(text, add_special_tokens=False)) and matcher.is_accepting()


def test_forcing_grammar_admits_only_valid_calls(tiny_llm, ll_tokenizer):
    pytest.importorskip("llguidance")
    tok = tiny_llm.tokenizer
    one = tool_call_grammar([WEATHER, ADD], parallel=False)
    many = tool_call_grammar([WEATHER, ADD], parallel=True)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
    add = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": -2}}\n</tool_call>'
    assert _accepts(ll_tokenizer, tok, one, call)
    assert _accepts(ll_tokenizer, tok, one, add)
    assert not _accepts(ll_tokenizer, tok, one, call + "\n" + add)  # one call only
    assert _accepts(ll_tokenizer, tok, many, call + "\n" + add)
    for wrong in ('<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',  # unknown function
                  '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>',  # missing required
                  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P", "x": 1}}\n</tool_call>',
                  '<tool_call>\n{"name": "add", "arguments": {"a": 1.5, "b": 2}}\n</tool_call>',  # not an integer
                  'Sure! ' + call):
        assert not _accepts(ll_tokenizer, tok, one, wrong), wrong
