"""Running `modelchip generate/serve` over several processes from the command line: spawned, torchrun-style,
and a served run whose worker is killed (shared by the tensor-parallel and attention-FFN CLI tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from modelchip.runtime.distributed.launch import free_port

ARGS = ["--prompt", "The engine schedules", "--max-tokens", "8", "--backend", "reference", "--dtype", "float32",
        "--json"]
TIMEOUT_S = 300  # a hang guard on a busy 2-core machine, not a speed expectation


def generate(tiny_dir, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "modelchip", "generate", "--model", str(tiny_dir), *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    return json.loads(out)


def check_torchrun_equals_one_process(tiny_dir, *extra: str) -> None:
    """Two ranks each run the command with MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE set: rank 0 prints the
    single process's tokens, rank 1 computes and prints nothing."""
    single = result(generate(tiny_dir))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [generate(tiny_dir, *extra, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    rank0 = result(ranks[0])
    out, err = ranks[1].communicate(timeout=TIMEOUT_S)
    assert ranks[1].returncode == 0, err
    assert out == ""  # rank 1 computes, rank 0 alone prints
    assert rank0["token_ids"] == single["token_ids"]


def check_serve_ends_when_worker_dies(tiny_dir, extra: tuple[str, ...], died: str) -> None:
    """A server over two ranks answers, then its spawned worker is killed: it exits non-zero by itself, within
    seconds, saying `died`."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    cmd = [sys.executable, "-m", "modelchip", "serve", "--model", str(tiny_dir), "--backend", "reference",
           "--dtype", "float32", "--port", "0", *extra]
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
        assert f"{died} (killed by SIGKILL)" in err
    finally:
        if server.poll() is None:
            server.kill()
