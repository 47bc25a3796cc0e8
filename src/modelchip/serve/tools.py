"""Tool calling in the Hermes format: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, the format of
the Qwen2.5 / Qwen3 / SmolLM3 / Hermes chat templates.

- `render_messages` turns OpenAI messages and tools into what the model's chat template reads. A template that
  renders `tools` itself gets them as they are (HF's convention); one that ignores them (SmolLM2, Llama-2-style
  ChatML) gets the tools described in the system message in the Hermes format, and earlier tool calls and tool
  results written out as Hermes text, so the model sees one consistent format.
- `tool_call_grammar` forces valid calls (tool_choice "required" or a named function) through the structured
  outputs grammar: only the listed names, arguments that validate against each function's parameters schema.
- `ToolCallParser` splits generated text into content and tool calls, incrementally (one parser serves both the
  streaming deltas and the whole reply, so the two always agree).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

from modelchip.errors import ModelchipError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# the start of a call whose arguments can be streamed as they come: {"name": "<name>", "arguments": <json...>
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')

SYSTEM_TOOLS = """# Tools

You may call one or more functions to help with the user's request. The functions are described in JSON \
within <tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, reply with a JSON object holding its name and arguments within <tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- prompts ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _template_renders_tools(template: str, tokenizer) -> bool:
    probe = [{"type": "function", "function": {"name": "modelchip_probe_tool", "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=probe)
    except ModelchipError:
        return False
    return "modelchip_probe_tool" in text


def template_renders_tools(tokenizer) -> bool:
    """Whether the model's chat template writes the `tools` it is given into the prompt."""
    return _template_renders_tools(tokenizer.chat_template or "", tokenizer)


def check_template_format(tokenizer) -> None:
    """Refuse templates that render tools in a format other than Hermes' (the only one parsed here)."""
    if template_renders_tools(tokenizer) and OPEN not in (tokenizer.chat_template or ""):
        raise ModelchipError("this model's chat template writes tool calls in a format other than Hermes' "
                             "<tool_call>{...}</tool_call>, which is the only tool-call format this server parses")


def _hermes_call(call: dict) -> str:
    return f'{OPEN}\n{json.dumps({"name": call["name"], "arguments": call["arguments"]}, ensure_ascii=False)}\n{CLOSE}'


def render_messages(messages: list[dict], tools: list[dict] | None, native: bool) -> tuple[list[dict], list | None]:
    """(messages, tools) for the chat template. `messages` are HF dicts whose assistant `tool_calls` are
    [{"id", "name", "arguments": dict}] and whose tool results have role "tool". With `native` the template
    renders tools and calls itself; otherwise both are written as Hermes text here."""
    if native:
        out = []
        for m in messages:
            if m.get("tool_calls"):
                m = {**m, "tool_calls": [{"id": c["id"], "type": "function",
                                          "function": {"name": c["name"], "arguments": c["arguments"]}}
                                         for c in m["tool_calls"]]}
            out.append(m)
        return out, tools
    out: list[dict] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            text = "\n".join([m["content"]] * bool(m.get("content")) + [_hermes_call(c) for c in m["tool_calls"]])
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            response = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("_tool_results"):  # consecutive results share one turn
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        else:
            out.append(dict(m))
    for m in out:
        m.pop("_tool_results", None)
    if tools:
        described = SYSTEM_TOOLS.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{described}"}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out, None


# -- forcing calls ----------------------------------------------------------------------------------------------


def call_schema(function: dict) -> dict:
    """JSON schema of one Hermes call object to `function` (name first, then arguments)."""
    params = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_call_grammar(functions: list[dict], parallel: bool) -> str:
    """A Lark grammar (llguidance's dialect) admitting only Hermes calls to `functions`: one, or with `parallel`
    one or more."""
    schema = call_schema(functions[0]) if len(functions) == 1 else {"anyOf": [call_schema(f) for f in functions]}
    call = f"call: {json.dumps(OPEN + chr(10))} %json {json.dumps(schema)} {json.dumps(chr(10) + CLOSE)}"
    start = 'start: call ("\\n" call)*' if parallel else "start: call"
    return f"{start}\n{call}\n"


# -- parsing ----------------------------------------------------------------------------------------------------


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def openai(self) -> dict:
        out: dict = {"index": self.index}
        if self.id is not None:
            out |= {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        else:
            out["function"] = {"arguments": self.arguments}
        return out


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class ToolCallParser:
    """Feed generated text with `add` (and `finish` at the end); each call returns (content delta, tool-call
    deltas). Text that could still be the start of `<tool_call>` or the end of a call is held back."""

    text: str = ""
    pos: int = 0  # text before this is handled
    calls: list[ParsedCall] = field(default_factory=list)
    content: str = ""
    _in_call: bool = False
    _args_start: int | None = None  # where the current call's arguments begin (streamable form)
    _args_sent: int = 0

    def add(self, delta: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += delta
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            if not self._in_call:
                i = self.text.find(OPEN, self.pos)
                end = i if i >= 0 else \
                    len(self.text) if final else len(self.text) - _partial_suffix(self.text, OPEN, self.pos)
                piece = self.text[self.pos:end]
                if i < 0 and final and not self.calls:
                    content.append(piece)
                    self.pos = end
                    break
                # trailing blanks wait: before a call or at the end of a reply with calls they are dropped
                kept = piece.rstrip()
                content.append(kept)
                self.pos += len(kept)
                if i < 0:
                    break
                self.pos, self._in_call = i + len(OPEN), True
                self._args_start, self._args_sent = None, 0
            if not self._step_call(content, deltas, final):
                break
        text = "".join(content)
        self.content += text
        return text, deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return self.add("", final=True)

    def _step_call(self, content: list[str], deltas: list[ToolCallDelta], final: bool) -> bool:
        """Advance inside a call; True when the call closed (go on scanning), False to wait for more text."""
        close = self.text.find(CLOSE, self.pos)
        end = close if close >= 0 else len(self.text)
        if self._args_start is None:
            head = _HEAD.match(self.text, self.pos, end)
            if head is not None:
                name = json.loads(f'"{head.group(1)}"')
                self.calls.append(ParsedCall(new_call_id(), name))
                deltas.append(ToolCallDelta(len(self.calls) - 1, self.calls[-1].id, name))
                self._args_start = head.end()
            elif close < 0 and not final:
                return False
            else:  # a closed (or cut off) call not in the streamable form: parse it whole
                raw = self.text[self.pos - len(OPEN):end + len(CLOSE) * (close >= 0)]
                self._whole_call(self.text[self.pos:end], raw, content, deltas)
                return self._close(close)
        if close < 0 and not final:
            available = self.text[self._args_start:]
            keep = _outer_tail(available, _partial_suffix(available, CLOSE, 0))
            self._send_args(available[:len(available) - keep], deltas)
            return False
        body = self.text[self._args_start:end].rstrip()
        self._send_args(_arguments(body), deltas)
        return self._close(close)

    def _send_args(self, args: str, deltas: list[ToolCallDelta]) -> None:
        if len(args) > self._args_sent:
            piece = args[self._args_sent:]
            self._args_sent = len(args)
            self.calls[-1].arguments += piece
            deltas.append(ToolCallDelta(len(self.calls) - 1, arguments=piece))

    def _whole_call(self, body: str, raw: str, content: list[str], deltas: list[ToolCallDelta]) -> None:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            content.append(raw)  # not a call after all: it stays text
            return
        args = obj.get("arguments", obj.get("parameters", {}))
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        self.calls.append(ParsedCall(new_call_id(), obj["name"], args))
        deltas.append(ToolCallDelta(len(self.calls) - 1, self.calls[-1].id, obj["name"], args))

    def _close(self, close: int) -> bool:
        self._in_call = False
        self.pos = len(self.text) if close < 0 else close + len(CLOSE)
        return close >= 0

    def openai_calls(self) -> list[dict]:
        return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls]


def _arguments(body: str) -> str:
    """The arguments' text from what follows `"arguments":` up to the end of the call: without the `}` that
    closes the call object, unless only the text with it is JSON (a call cut off before its own `}`)."""
    if not body.endswith("}"):
        return body
    inner = body[:-1].rstrip()
    for candidate in (inner, body):
        try:
            json.loads(candidate)
            return candidate
        except json.JSONDecodeError:
            pass
    return inner


def _partial_suffix(text: str, marker: str, start: int) -> int:
    """Length of the longest end of text[start:] that is a proper start of `marker`."""
    for k in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def _outer_tail(args: str, keep: int) -> int:
    """Characters to hold back at the end of streamed arguments: a partial closing tag, and before it the
    whitespace and `}` that may close the call object rather than the arguments."""
    i = len(args) - keep
    while i > 0 and args[i - 1].isspace():
        i -= 1
    if i > 0 and args[i - 1] == "}":
        i -= 1
        while i > 0 and args[i - 1].isspace():
            i -= 1
    return len(args) - i


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content or None, OpenAI tool_calls) of a whole reply."""
    parser = ToolCallParser()
    parser.add(text, final=True)
    content = parser.content if parser.content.strip() or not parser.calls else None
    return content, parser.openai_calls()
