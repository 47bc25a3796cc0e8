"""Structured outputs and tool calling through `modelchip serve` with the real SmolLM2 and the real `openai`
client: a json_schema reply validates against its schema (checked with jsonschema), a json_object reply parses,
forced tool calls parse into tool_calls whose arguments validate, streamed tool-call deltas reassemble into the
same calls, and invalid tools / tool_choice / response_format are 400s naming the parameter."""

from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

pytestmark = pytest.mark.slow  # every test here talks to a server

SMOLLM2 = "smollm2-135m"
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
          "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0},
                         "city": {"type": "string", "maxLength": 40}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 40},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["a", "b"],
                   "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_json_schema_reply_validates(openai_client):
    r = openai_client.chat.completions.create(
        model=SMOLLM2, messages=ask("Describe a person who lives in Paris as JSON."), max_tokens=80, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice  # the grammar ended it, well before max_tokens
    jsonschema.validate(json.loads(choice.message.content), PERSON)
    # sampled, the constraint holds as well
    for seed in (1, 2):
        r = openai_client.chat.completions.create(
            model=SMOLLM2, messages=ask("Invent a person."), max_tokens=80, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
        if r.choices[0].finish_reason == "stop":
            jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_json_object_reply_parses_streamed_or_not(openai_client):
    question = 'Answer as a JSON object with the key "capital": what is the capital of France?'
    kwargs = dict(model=SMOLLM2, messages=ask(question), max_tokens=60, temperature=0,
                  response_format={"type": "json_object"})
    whole = openai_client.chat.completions.create(**kwargs)
    assert whole.choices[0].finish_reason == "stop"
    assert json.loads(whole.choices[0].message.content) == {"capital": "Paris"}
    streamed = "".join(c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(
        stream=True, **kwargs) if c.choices)
    assert streamed == whole.choices[0].message.content


def test_completions_take_response_format(openai_client):
    r = openai_client.completions.create(model=SMOLLM2, prompt="A JSON object describing a cat:", max_tokens=60,
                                         temperature=0, extra_body={"response_format": {"type": "json_object"}})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].text), dict)
    r = openai_client.completions.create(model=SMOLLM2, prompt="Is the sky blue? Answer:", max_tokens=10,
                                         temperature=0, extra_body={"structured_outputs": {"choice": [" yes", " no"]}})
    assert r.choices[0].text in (" yes", " no")


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_parses(openai_client, tool_choice):
    r = openai_client.chat.completions.create(
        model=SMOLLM2, messages=ask("What is the weather like in Paris?"), tools=[WEATHER, ADD],
        tool_choice=tool_choice, max_tokens=80, temperature=0, parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    name = calls[0].function.name
    assert name in PARAMS and (name == "get_weather" or tool_choice == "required")
    jsonschema.validate(json.loads(calls[0].function.arguments), PARAMS[name])
    assert not choice.message.content


def test_streamed_tool_call_deltas_reassemble(openai_client):
    kwargs = dict(model=SMOLLM2, messages=ask("Add 2 and 40."), tools=[WEATHER, ADD], max_tokens=80,
                  temperature=0, tool_choice={"type": "function", "function": {"name": "add"}})
    whole = openai_client.chat.completions.create(**kwargs).choices[0]
    calls: dict[int, dict] = {}
    finish, content, chunks = None, "", 0
    for chunk in openai_client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            content += c.delta.content or ""
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                chunks += 1
                call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    call["id"], call["name"] = d.id, d.function.name
                call["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls" and content == ""
    assert chunks > 2, "the arguments came in one piece: not streamed"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(t.function.name, json.loads(t.function.arguments)) for t in whole.message.tool_calls]
    jsonschema.validate(json.loads(calls[0]["arguments"]), PARAMS["add"])
    assert calls[0]["id"].startswith("call_")


def test_tool_results_continue_the_conversation(openai_client):
    messages = ask("What is the weather like in Paris?") + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'}]
    r = openai_client.chat.completions.create(model=SMOLLM2, messages=messages, tools=[WEATHER], max_tokens=30,
                                              temperature=0, tool_choice="none")
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert not r.choices[0].message.tool_calls


def test_bad_tools_and_formats_are_400(smollm2_server, openai_client):
    chat = f"{smollm2_server.url}/v1/chat/completions"
    base = {"model": SMOLLM2, "messages": ask("hi"), "max_tokens": 4}
    named = {"type": "function", "function": {"name": "nope"}}
    bad = [
        ({"tools": [WEATHER], "tool_choice": named}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": []}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, None),
        ({"tools": [{"type": "retrieval"}]}, None),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
            "x": {"type": "no-such-type"}}}}}], "tool_choice": "required"}, "tools"),
        ({"response_format": {"type": "xml"}}, None),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}}, "response_format"),
        ({"response_format": {"type": "json_object"}, "tools": [WEATHER], "tool_choice": "required"}, None),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "f", "arguments": "not json"}}]}]}, "messages.0.tool_calls.0.function.arguments"),
    ]
    for extra, param in bad:
        r = httpx.post(chat, json=base | extra, timeout=60)
        assert r.status_code == 400, (extra, r.text)
        err = r.json()["error"]
        assert err["message"], err
        if param is not None:
            assert err["param"] == param, (extra, err)
    m = smollm2_server.metrics()
    assert not any(k.startswith("modelchip_http_requests_total") and 'code="5' in k for k in m), m
    assert openai_client.chat.completions.create(model=SMOLLM2, messages=ask("hi"), max_tokens=2).choices
