"""`modelchip serve`'s operations options reach the running server: --health-without-api-key opens /health
(only), --no-enable-prefix-caching turns the cache off (nothing looked up, said at start and in
vllm:cache_config_info), and a bad --max-waiting-requests is refused before loading."""

from __future__ import annotations

import subprocess
import sys

import pytest

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow  # starts a server

KEY = "sk-ops-test"


def test_serve_options(start_server, tiny_dir):
    server = start_server(str(tiny_dir), "--served-model-name", "tiny", "--api-key", KEY, "--health-without-api-key",
                          "--no-enable-prefix-caching", "--max-waiting-requests", "8")
    assert any("(no prefix caching)" in line for line in server.log), server.log
    assert httpx.get(f"{server.url}/health", timeout=30).json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/metrics", timeout=30).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "prompt": "The engine schedules requests in steps. " * 4, "max_tokens": 2}
    for _ in range(2):  # the same prompt twice: with the cache on, the second would hit
        assert httpx.post(f"{server.url}/v1/completions", json=body, headers=auth, timeout=60).status_code == 200
    m = server.metrics(headers=auth)
    assert m['vllm:prefix_cache_queries_total{model_name="tiny"}'] == 0
    assert m['vllm:prefix_cache_hits_total{model_name="tiny"}'] == 0
    assert m['vllm:cache_config_info{block_size="16",num_gpu_blocks="2048",enable_prefix_caching="False"}'] == 1


def test_bad_queue_bound_is_refused():
    r = subprocess.run([sys.executable, "-m", "modelchip", "serve", "--model", "unused", "--port", "0",
                        "--max-waiting-requests", "-1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--max-waiting-requests" in r.stderr
