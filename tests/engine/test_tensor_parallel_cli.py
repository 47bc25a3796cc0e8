"""`modelchip generate --tensor-parallel-size 2`, spawned by rank 0 and launched torchrun-style (every rank
runs the command with MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE set): the same tokens as one process."""

from __future__ import annotations

import pytest
from parallel_cli import check_serve_ends_when_worker_dies, check_torchrun_equals_one_process, generate, result


@pytest.mark.slow
def test_generate_spawned_ranks_equal_one_process(tiny_dir):
    single = result(generate(tiny_dir))
    parallel = result(generate(tiny_dir, "--tensor-parallel-size", "2"))
    assert parallel["token_ids"] == single["token_ids"] and parallel["text"] == single["text"]


@pytest.mark.slow
def test_generate_torchrun_ranks_equal_one_process(tiny_dir):
    check_torchrun_equals_one_process(tiny_dir)


@pytest.mark.slow
def test_serve_ends_when_a_worker_dies(tiny_dir):
    check_serve_ends_when_worker_dies(tiny_dir, ("--tensor-parallel-size", "2"), "tensor-parallel rank 1 died")
