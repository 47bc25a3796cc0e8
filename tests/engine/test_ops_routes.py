"""The server's operations side, in process (FastAPI's TestClient over the tiny checkpoint): /tokenize and
/detokenize against transformers' own tokenizer of the same checkpoint, /openapi.json describing every request
body, the vLLM-named gauges and prefix-cache counters on /metrics, /health open to probes when asked, and a full
waiting queue answered with 429 (seen by the openai client as a RateLimitError)."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
transformers = pytest.importorskip("transformers")

from fastapi.testclient import TestClient  # noqa: E402

from modelchip.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from modelchip.engine.async_engine import AsyncEngine  # noqa: E402
from modelchip.serve.app import ServerState, create_app  # noqa: E402

MODEL = "tiny"
SYSTEM = "The engine schedules requests in steps. Each step runs a batch of sequences through the model. " * 2
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Blocks hold the keys."}]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tiny_dir))


def serve(llm, **state) -> TestClient:
    engine = LLMEngine(llm, EngineConfig(kv_cache_tokens=2048, block_size=16))
    return TestClient(create_app(ServerState(llm, engine, MODEL, **state)))


def metrics(client: TestClient, headers: dict | None = None) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics", headers=headers).text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err


def test_tokenize_and_detokenize_match_transformers(tiny_llm, hf_tokenizer):
    with serve(tiny_llm) as client:
        text = "Unicode must survive: naïve café, 日本語 😀"
        r = client.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
        want = hf_tokenizer(text)["input_ids"]
        assert r == {"count": len(want), "max_model_len": 1024, "tokens": want,
                     "token_strs": hf_tokenizer.convert_ids_to_tokens(want)}
        plain = client.post("/tokenize", json={"model": MODEL, "prompt": text, "add_special_tokens": False}).json()
        assert plain["tokens"] == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert plain["token_strs"] is None

        chat = client.post("/tokenize", json={"messages": MESSAGES}).json()
        want = hf_tokenizer.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True,
                                                return_dict=False)
        assert chat["tokens"] == list(want) and chat["count"] == len(want)
        bare = client.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}).json()
        assert bare["tokens"] == list(hf_tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=False,
                                                                       add_generation_prompt=False))
        # the ids a chat completion is given: its usage counts exactly these
        reply = client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
        assert reply.json()["usage"]["prompt_tokens"] == chat["count"]

        for ids in (chat["tokens"], want[:3], [5]):
            assert client.post("/detokenize", json={"tokens": ids}).json() == {
                "prompt": hf_tokenizer.decode(ids, skip_special_tokens=False)}
        assert client.post("/detokenize", json={"model": MODEL, "tokens": []}).json() == {"prompt": ""}


def test_tokenize_and_detokenize_refuse_bad_input(tiny_llm):
    with serve(tiny_llm) as client:
        error(client.post("/tokenize", json={"model": "other", "prompt": "x"}), 404, "model_not_found")
        error(client.post("/tokenize", json={}), 400, "missing_required_parameter")
        error(client.post("/tokenize", json={"prompt": 5}), 400, "invalid_type")
        error(client.post("/tokenize", json={"messages": []}), 400)
        error(client.post("/tokenize", json={"messages": MESSAGES, "continue_final_message": True}), 400,
              "unsupported_parameter")
        error(client.post("/tokenize", content=b"[1, 2]"), 400, "invalid_json")
        assert error(client.post("/detokenize", json={"tokens": [3, 400]}), 400, "invalid_value")["param"] == "tokens.1"
        error(client.post("/detokenize", json={"tokens": [-1]}), 400, "invalid_value")
        error(client.post("/detokenize", json={"tokens": ["a"]}), 400, "invalid_type")
        error(client.post("/detokenize", json={"model": "other", "tokens": [3]}), 404, "model_not_found")
        error(client.get("/tokenize"), 405)


def test_openapi_describes_every_request_body(tiny_llm):
    with serve(tiny_llm) as client:
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def resolve(node):
        ref = node.get("$ref", "")
        assert ref.startswith("#/components/schemas/"), node
        return schemas[ref.rsplit("/", 1)[1]]

    bodies = {path: op["post"]["requestBody"]["content"]["application/json"]["schema"]
              for path, op in spec["paths"].items() if "post" in op}
    assert set(bodies) == {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}
    assert set(resolve(bodies["/v1/chat/completions"])["required"]) == {"model", "messages"}
    completion = resolve(bodies["/v1/completions"])
    assert set(completion["required"]) == {"model", "prompt"}
    assert completion["properties"]["max_tokens"]["anyOf"][0] == {"type": "integer"}
    assert [resolve(s)["required"] for s in bodies["/tokenize"]["anyOf"]] == [["prompt"], ["messages"]]
    assert resolve(bodies["/detokenize"])["required"] == ["tokens"]
    # every reference anywhere in the document points at a schema it defines
    refs = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert refs and all(r.rsplit("/", 1)[1] in schemas for r in refs)


def test_metrics_by_vllm_names_and_prefix_cache_hits(tiny_llm, hf_tokenizer):
    with serve(tiny_llm) as client:
        before = metrics(client)
        label = f'{{model_name="{MODEL}"}}'
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
            assert before[name + label] == 0
        assert before['vllm:cache_config_info{block_size="16",num_gpu_blocks="128",enable_prefix_caching="True"}'] == 1
        prompt_ids = client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
        for user in ("Blocks hold the keys.", "Streaming sends text."):  # one after the other: the second hits
            messages = [MESSAGES[0], {"role": "user", "content": user}]
            client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 2})
        after = metrics(client)
        shared = 0  # full blocks the two prompts share, from the token lists
        second = client.post("/tokenize", json={"messages": [MESSAGES[0], {"role": "user",
                                                                            "content": "Streaming sends text."}]})
        a, b = prompt_ids, second.json()["tokens"]
        while (shared + 1) * 16 <= min(len(a), len(b) - 1) and a[shared * 16:(shared + 1) * 16] == b[
                shared * 16:(shared + 1) * 16]:
            shared += 1
        assert shared >= 2
        hits = after["vllm:prefix_cache_hits_total" + label] - before["vllm:prefix_cache_hits_total" + label]
        queries = after["vllm:prefix_cache_queries_total" + label] - before["vllm:prefix_cache_queries_total" + label]
        assert hits == shared * 16 and queries == len(a) + len(b)
        assert after["modelchip_prefix_cache_hits_total"] - before["modelchip_prefix_cache_hits_total"] == hits
        assert after["vllm:kv_cache_usage_perc" + label] == 0  # cached blocks are free, not in use
        assert after["modelchip_kv_cache_blocks_cached"] >= shared


def test_health_can_be_left_open_to_probes(tiny_llm):
    key = {"Authorization": "Bearer k"}
    with serve(tiny_llm, api_key="k", health_without_api_key=True) as client:
        assert client.get("/health").json() == {"status": "ok"}
        for path in ("/metrics", "/v1/models", "/openapi.json"):
            error(client.get(path), 401, "invalid_api_key")
        error(client.post("/tokenize", json={"prompt": "x"}), 401, "invalid_api_key")
        assert client.post("/tokenize", json={"prompt": "x"}, headers=key).status_code == 200
    with serve(tiny_llm, api_key="k") as client:  # the default: the key guards /health too
        error(client.get("/health"), 401, "invalid_api_key")
        assert client.get("/health", headers=key).status_code == 200


def test_a_full_waiting_queue_answers_429(tiny_llm):
    openai = pytest.importorskip("openai")
    engine = LLMEngine(tiny_llm, EngineConfig(kv_cache_tokens=2048))
    stalled = AsyncEngine(engine)  # not started yet: what is sent to it waits
    app = create_app(ServerState(tiny_llm, engine, MODEL, async_engine=stalled, max_waiting_requests=3))
    finished, done = [], threading.Event()

    def sink(out):
        if out.finished:
            finished.append(out)
            if len(finished) == 3:
                done.set()

    with TestClient(app) as client:
        for i in range(3):
            stalled.add_request(f"queued-{i}", [5, 6, 7], SamplingParams(max_tokens=2), sink)
        assert stalled.num_waiting == 3
        body = {"model": MODEL, "prompt": "The engine", "max_tokens": 2, "ignore_eos": True}
        r = client.post("/v1/completions", json=body)
        err = error(r, 429, "queue_full")
        assert "3 requests are waiting" in err["message"] and r.headers["retry-after"] == "1"
        error(client.post("/v1/completions", json={**body, "stream": True}), 429, "queue_full")
        error(client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 2,
                                                        "messages": [{"role": "user", "content": "hi"}]}), 429)
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            oai.completions.create(model=MODEL, prompt="The engine", max_tokens=2)
        stalled.start()  # the engine drains the queue; new requests are taken again
        assert done.wait(60)
        try:
            assert client.post("/v1/completions", json=body).json()["usage"]["completion_tokens"] == 2
        finally:
            stalled.stop()
        assert metrics(client)['modelchip_http_requests_total{path="/v1/completions",code="429"}'] == 3
