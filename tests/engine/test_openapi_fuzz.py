"""Property-based fuzzing of a running `modelchip serve` with schemathesis, from the server's own /openapi.json:
requests that fit the schema and requests that break it (wrong types, missing fields, odd values), on every
route. Whatever arrives, the server answers without a 5xx and stays up.

Bounded: the tiny checkpoint, a context of 64 tokens (so no accepted request generates for long) and a fixed
number of examples per route. `model` is set to the served name in the bodies that carry a string one, so the
fuzzed requests reach prompt rendering, sampling checks and the engine instead of stopping at the model check.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.slow  # starts a server and sends it hundreds of requests

MODEL = "tiny"
EXAMPLES_PER_ROUTE = 40


@pytest.fixture(scope="module")
def fuzzed_server(start_server, tiny_dir):
    return start_server(str(tiny_dir), "--served-model-name", MODEL, "--max-model-len", "64",
                        "--kv-cache-tokens", "2048", "--max-num-batched-tokens", "128")


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    loaded = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    loaded.config.generation.update(modes=list(schemathesis.GenerationMode), max_examples=EXAMPLES_PER_ROUTE)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case, fuzzed_server):
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = MODEL
    case.call_and_validate(base_url=fuzzed_server.url, checks=[not_a_server_error], timeout=120)


def test_the_fuzzed_server_is_still_healthy(fuzzed_server):
    assert fuzzed_server.alive()
    assert httpx.get(f"{fuzzed_server.url}/health", timeout=30).json() == {"status": "ok"}
    m = fuzzed_server.metrics()
    assert not any(k.startswith("modelchip_http_requests_total") and 'code="5' in k for k in m), m
    assert m["modelchip_engine_errors_total"] == 0
    # the fuzzed requests got through to the engine, not only to the checks in front of it
    assert m['modelchip_http_requests_total{path="/v1/chat/completions",code="200"}'] > 0
    assert sum(m[f'modelchip_requests_finished_total{{finish_reason="{r}"}}'] for r in ("stop", "length")) > 0
