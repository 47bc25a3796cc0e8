"""`modelchip serve` in a real process on 127.0.0.1, called with the real `openai` client: chat and completions,
streaming and not, usage, /v1/models, /health, /metrics, bad input (4xx, OpenAI error bodies, server still
alive), client disconnects (request aborted, blocks freed), and 64 concurrent streams equal to each request
run alone."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow  # every test here starts a server or talks to one

SMOLLM2 = "smollm2-135m"
LOAD_REQUESTS = 64
LOAD_MAX_TOKENS = 6


def blocks_used(server) -> float:
    return server.metrics()["modelchip_kv_cache_blocks_used"]


def wait_for(predicate, timeout: float = 300.0, what: str = "condition"):
    """Poll until `predicate` holds; the timeout only keeps a broken server from hanging the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def assert_error(response: httpx.Response, status: int, param: str | None = "", code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if param != "":
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


# -- happy paths --------------------------------------------------------------------------------------------


def test_models_and_health(smollm2_server, openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [SMOLLM2]
    assert httpx.get(f"{smollm2_server.url}/health").json() == {"status": "ok"}


def test_chat_completion(openai_client):
    r = openai_client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24,
        temperature=0)
    choice = r.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_equals_non_streaming(openai_client):
    kwargs = dict(model=SMOLLM2, messages=[{"role": "system", "content": "You are brief."},
                                           {"role": "user", "content": "Name three colours."}],
                  max_tokens=20, temperature=0)
    whole = openai_client.chat.completions.create(**kwargs)
    stream = openai_client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    assert roles == ["assistant"]
    assert len(pieces) > 1, "the reply came in one piece: not streamed"
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_streaming_and_not(openai_client):
    kwargs = dict(model=SMOLLM2, prompt="The three primary colours are", max_tokens=12, temperature=0)
    whole = openai_client.completions.create(**kwargs)
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12
    text = "".join(c.choices[0].text for c in openai_client.completions.create(stream=True, **kwargs) if c.choices)
    assert text == whole.choices[0].text and text.strip()


def test_completion_stop_string_and_seed(openai_client):
    base = openai_client.completions.create(model=SMOLLM2, prompt="Count: 1, 2, 3,", max_tokens=16,
                                            temperature=0).choices[0].text
    assert " 5" in base, base
    cut = openai_client.completions.create(model=SMOLLM2, prompt="Count: 1, 2, 3,", max_tokens=16, temperature=0,
                                           stop=[" 5"])
    assert cut.choices[0].text == base[: base.index(" 5")]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(
        model=SMOLLM2, prompt="Count: 1, 2, 3,", max_tokens=16, temperature=0, stop=[" 5"], stream=True)
        if c.choices)
    assert streamed == cut.choices[0].text
    sampled = [openai_client.completions.create(model=SMOLLM2, prompt="Once upon a time", max_tokens=12,
                                                temperature=1.0, seed=42).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_gets_openai_errors(smollm2_server, openai_client):
    url = smollm2_server.url
    chat = f"{url}/v1/chat/completions"
    comp = f"{url}/v1/completions"
    msgs = [{"role": "user", "content": "hi"}]
    assert_error(httpx.post(chat, content=b'{"model": "smollm2-135m", "messages": [', timeout=30), 400,
                 code="invalid_json")
    assert_error(httpx.post(chat, content=b"\xff\xfe", timeout=30), 400, code="invalid_json")
    assert_error(httpx.post(chat, json=[1, 2], timeout=30), 400)
    assert_error(httpx.post(chat, json={"messages": msgs}, timeout=30), 400, param="model")
    assert_error(httpx.post(chat, json={"model": SMOLLM2}, timeout=30), 400, param="messages")
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": []}, timeout=30), 400, param="messages")
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": "hi"}, timeout=30), 400, param="messages")
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": [{"role": "wizard", "content": "x"}]},
                            timeout=30), 400)
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": msgs, "max_tokens": "ten"}, timeout=30), 400,
                 param="max_tokens")
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": msgs, "max_tokens": True}, timeout=30), 400,
                 param="max_tokens")
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": msgs, "temperature": "hot"}, timeout=30), 400,
                 param="temperature")
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": msgs, "temperature": 7}, timeout=30), 400,
                 param="temperature")
    assert_error(httpx.post(comp, json={"model": SMOLLM2, "prompt": ""}, timeout=30), 400, param="prompt")
    assert_error(httpx.post(comp, json={"model": SMOLLM2, "prompt": [10**9]}, timeout=30), 400, param="prompt")
    assert_error(httpx.post(comp, json={"model": SMOLLM2, "prompt": {"a": 1}}, timeout=30), 400, param="prompt")
    assert_error(httpx.post(chat, json={"model": SMOLLM2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, timeout=30), 400)
    assert_error(httpx.get(f"{url}/v1/nothing-here", timeout=30), 404)
    assert_error(httpx.get(chat, timeout=30), 405)

    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=SMOLLM2, messages=msgs, max_tokens=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=SMOLLM2, messages=msgs, max_tokens=10**12)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model=SMOLLM2, prompt="word " * 9000, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.chat.completions.create(model="gpt-4o", messages=msgs)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:  # the deprecated form of tools
        openai_client.chat.completions.create(model=SMOLLM2, messages=msgs, max_tokens=2,
                                              extra_body={"functions": [{"name": "f"}]})
    assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == "functions"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model=SMOLLM2, prompt="hi", max_tokens=2, suffix="x")
    assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError):
        openai_client.completions.create(model=SMOLLM2, prompt="hi", max_tokens=2, best_of=3)
    for bad, param in (({"n": 0}, "n"), ({"presence_penalty": 2.5}, "presence_penalty"),
                       ({"frequency_penalty": -9}, "frequency_penalty"), ({"logit_bias": {"x": 5}}, "logit_bias"),
                       ({"logit_bias": {"5": 101}}, "logit_bias"), ({"logprobs": True, "top_logprobs": 21},
                                                                    "top_logprobs"),
                       ({"top_logprobs": 2}, "top_logprobs"), ({"max_tokens": 0}, "max_tokens"),
                       ({"extra_body": {"min_tokens": 9}}, "min_tokens"),
                       ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
                       ({"extra_body": {"stop_token_ids": [10**7]}}, "stop_token_ids")):
        with pytest.raises(openai.BadRequestError) as e:
            openai_client.chat.completions.create(model=SMOLLM2, messages=msgs, max_tokens=2, **bad) \
                if "max_tokens" not in bad else openai_client.chat.completions.create(model=SMOLLM2, messages=msgs,
                                                                                      **bad)
        assert e.value.body["param"] == param, (bad, e.value.body)
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model=SMOLLM2, prompt="hi", max_tokens=2, logprobs=21)
    assert e.value.body["param"] == "logprobs"

    # no bad request ever reached the engine, none was a 5xx, and the server still answers
    m = smollm2_server.metrics()
    assert not any(k.startswith("modelchip_http_requests_total") and 'code="5' in k for k in m), m
    assert m["modelchip_kv_cache_blocks_used"] == 0
    ok = openai_client.chat.completions.create(model=SMOLLM2, messages=msgs, max_tokens=3, temperature=0)
    assert ok.choices[0].message.content is not None


def test_client_disconnect_aborts_and_frees_blocks(smollm2_server):
    before = smollm2_server.metrics().get('modelchip_requests_finished_total{finish_reason="abort"}', 0)
    body = {"model": SMOLLM2, "prompt": "Write a very long story about a dragon.", "max_tokens": 2000,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{smollm2_server.url}/v1/completions",
                                                           json=body) as r:
        assert r.status_code == 200
        events = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["choices"][0]["finish_reason"] is None
                events += 1
                if events == 3:
                    # still reading: the request runs and holds blocks
                    assert blocks_used(smollm2_server) > 0
                    break
        # leaving the loop closed the line iterator, and with it the connection
    wait_for(lambda: smollm2_server.metrics().get('modelchip_requests_finished_total{finish_reason="abort"}', 0)
             > before, what="the abort")
    assert wait_for(lambda: blocks_used(smollm2_server) == 0, what="blocks to be freed")
    assert smollm2_server.metrics()["modelchip_num_requests_running"] == 0

    # a non-streaming request whose client gives up is aborted too
    aborted = smollm2_server.metrics()['modelchip_requests_finished_total{finish_reason="abort"}']
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{smollm2_server.url}/v1/completions", json={**body, "stream": False}, timeout=1.0)
    wait_for(lambda: smollm2_server.metrics()['modelchip_requests_finished_total{finish_reason="abort"}'] > aborted,
             what="the abort of the non-streaming request")
    assert wait_for(lambda: blocks_used(smollm2_server) == 0, what="blocks to be freed")


# -- load -----------------------------------------------------------------------------------------------------


def load_prompts() -> list[str]:
    """32 distinct prompts, each sent twice: every response is still checked against its request run alone,
    and the alone runs (one at a time, the slow part on two cores) are half as many."""
    subjects = ["cats", "the sea", "Paris", "winter", "robots", "tea", "music", "rain", "bread", "stars",
                "trains", "gardens", "chess", "bees", "maps", "clocks"]
    forms = ["Write one sentence about {}.", "Give me a fact about {}."]
    distinct = [f.format(s) for s in subjects for f in forms]
    return (distinct * 2)[:LOAD_REQUESTS]


def stream_chat(client, prompt: str) -> tuple[str, str | None]:
    text, finish = [], None
    for chunk in client.chat.completions.create(model=SMOLLM2, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=LOAD_MAX_TOKENS, temperature=0, stream=True):
        for c in chunk.choices:
            text.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(text), finish


def test_64_concurrent_streams_equal_each_alone(smollm2_server, openai_client):
    prompts = load_prompts()
    assert len(prompts) == LOAD_REQUESTS
    # how fast the server gets through them is benchmarks/bench_serving.py's to measure, not a test's
    with ThreadPoolExecutor(LOAD_REQUESTS) as pool:
        together = list(pool.map(lambda p: stream_chat(openai_client, p), prompts))
    m = smollm2_server.metrics()
    assert m["modelchip_kv_cache_blocks_used"] == 0
    assert m["modelchip_num_requests_running"] == 0 and m["modelchip_num_requests_waiting"] == 0
    # the same requests one at a time (greedy: batching must not change a token)
    alone = {p: openai_client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": p}], max_tokens=LOAD_MAX_TOKENS, temperature=0)
        for p in dict.fromkeys(prompts)}
    for p, (text, finish) in zip(prompts, together, strict=True):
        assert text == alone[p].choices[0].message.content, p
        assert finish == alone[p].choices[0].finish_reason, p
    assert blocks_used(smollm2_server) == 0


# -- auth -----------------------------------------------------------------------------------------------------


def test_api_key_required_on_every_request(start_server, tiny_dir):
    key = "sk-test-0123456789"
    server = start_server(str(tiny_dir), "--api-key", key, "--served-model-name", "tiny")
    for method, path in (("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics"),
                         ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            r = httpx.request(method, f"{server.url}{path}", headers=headers, json={}, timeout=30)
            assert_error(r, 401, code="invalid_api_key")
    good = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)
    assert [m.id for m in good.models.list().data] == ["tiny"]
    r = good.completions.create(model="tiny", prompt="The engine", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1
    bad = openai.OpenAI(base_url=server.base_url, api_key="nope", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
