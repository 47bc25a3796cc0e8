"""`modelchip generate/serve --afd-attention-ranks A --afd-ffn-ranks F`: spawned by rank 0 or launched
torchrun-style, the same tokens as one process; a served run whose FFN rank dies ends with a clear error."""

from __future__ import annotations

import pytest
from parallel_cli import (
    TIMEOUT_S,
    check_serve_ends_when_worker_dies,
    check_torchrun_equals_one_process,
    generate,
    result,
)

AFD = ("--afd-attention-ranks", "1", "--afd-ffn-ranks", "1")


@pytest.mark.slow
def test_generate_afd_equals_one_process(tiny_dir):
    single = result(generate(tiny_dir))
    afd = result(generate(tiny_dir, *AFD))
    assert afd["token_ids"] == single["token_ids"] and afd["text"] == single["text"]


@pytest.mark.slow
def test_generate_afd_under_torchrun_equals_one_process(tiny_dir):
    check_torchrun_equals_one_process(tiny_dir, *AFD)


def test_one_afd_size_without_the_other_is_refused(tiny_dir):
    proc = generate(tiny_dir, "--afd-ffn-ranks", "2")
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0
    assert "needs both --afd-attention-ranks and --afd-ffn-ranks" in err


@pytest.mark.slow
def test_serve_ends_when_the_ffn_rank_dies(tiny_dir):
    check_serve_ends_when_worker_dies(tiny_dir, AFD, "attention-FFN rank 1 died")
