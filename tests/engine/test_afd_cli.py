"""`modelchip generate/serve --afd-attention-ranks A --afd-ffn-ranks F`: spawned by rank 0 or launched
torchrun-style, the same tokens as one process; a served run whose FFN rank dies ends with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from modelchip.runtime.distributed.launch import free_port

AFD = ("--afd-attention-ranks", "1", "--afd-ffn-ranks", "1")
ARGS = ["--prompt", "The engine schedules", "--max-tokens", "8", "--backend", "reference", "--dtype", "float32",
        "--json"]
TIMEOUT_S = 300  # a hang guard on a busy 2-core machine, not a speed expectation


def _generate(tiny_dir, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "modelchip", "generate", "--model", str(tiny_dir), *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_generate_afd_equals_one_process(tiny_dir):
    single = _result(_generate(tiny_dir))
    afd = _result(_generate(tiny_dir, *AFD))
    assert afd["token_ids"] == single["token_ids"] and afd["text"] == single["text"]


@pytest.mark.slow
def test_generate_afd_under_torchrun_equals_one_process(tiny_dir):
    single = _result(_generate(tiny_dir))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [_generate(tiny_dir, *AFD, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    rank0 = _result(ranks[0])
    out, err = ranks[1].communicate(timeout=TIMEOUT_S)
    assert ranks[1].returncode == 0, err
    assert out == ""  # the FFN rank computes, rank 0 alone prints
    assert rank0["token_ids"] == single["token_ids"]


def test_one_afd_size_without_the_other_is_refused(tiny_dir):
    proc = _generate(tiny_dir, "--afd-ffn-ranks", "2")
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0
    assert "needs both --afd-attention-ranks and --afd-ffn-ranks" in err


@pytest.mark.slow
def test_serve_ends_when_the_ffn_rank_dies(tiny_dir):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    cmd = [sys.executable, "-m", "modelchip", "serve", "--model", str(tiny_dir), "--backend", "reference",
           "--dtype", "float32", "--port", "0", *AFD]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = server.stdout.readline()
        assert "listening on" in line, server.stderr.read()
        url = line.rsplit("listening on ", 1)[1].strip()
        body = {"model": str(tiny_dir), "prompt": "The engine", "max_tokens": 4, "temperature": 0}
        assert httpx.post(f"{url}/completions", json=body, timeout=TIMEOUT_S).status_code == 200
        workers = subprocess.run(["pgrep", "-P", str(server.pid), "-f", "spawn_main"], capture_output=True,
                                 text=True).stdout.split()
        assert len(workers) == 1
        os.kill(int(workers[0]), 9)
        _, err = server.communicate(timeout=60)  # ends by itself, within seconds
        assert server.returncode != 0
        assert "attention-FFN rank 1 died (killed by SIGKILL)" in err
    finally:
        if server.poll() is None:
            server.kill()
