"""Kill one rank of a parallel run while rank 0 generates, and check the run ends clearly and stays ended
(shared by the tensor-parallel and attention-FFN tests)."""

from __future__ import annotations

import threading
import time

import pytest

from modelchip.errors import ModelchipError


def check_killed_rank_ends_the_run(par, prompts: list[list[int]], proc, died: str) -> None:
    """`proc` (a spawned rank of `par`) is killed mid-generation: the generate call raises a ModelchipError
    containing `died` ("... rank 1 died"), never hangs, and every later call fails the same way."""
    result: dict = {}

    def generate() -> None:
        try:
            par.generate(prompts, max_tokens=200)  # the context bounds it; killed long before
            result["out"] = "finished"
        except Exception as exc:  # noqa: BLE001 (the test inspects whatever it was)
            result["out"] = exc

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    time.sleep(0.5)
    proc.kill()
    thread.join(timeout=60)  # a hang fails here instead of stalling the suite
    assert not thread.is_alive(), "the run hung after a rank died"
    err = result["out"]
    if err == "finished":  # generation beat the kill: the next call must still fail clearly
        with pytest.raises(ModelchipError, match=died):
            par.generate([[1, 2, 3]], max_tokens=2)
    else:
        assert isinstance(err, ModelchipError) and f"{died} (killed by SIGKILL)" in str(err)
    with pytest.raises(ModelchipError, match="rank 1 died"):  # and the run stays ended
        par.logits([1, 2])
    par.close()
