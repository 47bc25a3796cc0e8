"""A dead worker is named by the layout the run has: "expert-parallel rank 1", not "tensor-parallel rank 1"
under expert parallelism. The worker here is a real spawned process killed with SIGKILL, as in
kill_worker.py, without the cost of loading a model on it."""

from __future__ import annotations

import multiprocessing
import re
import time

import pytest

from modelchip.errors import ModelchipError
from modelchip.runtime.distributed.executor import ParallelRun
from modelchip.runtime.distributed.layout import make_layout


@pytest.mark.parametrize(("sizes", "label"), [
    ({"tensor_parallel_size": 2}, "tensor-parallel"),
    ({"expert_parallel_size": 2}, "expert-parallel"),
    ({"data_parallel_size": 2, "expert_parallel_size": 2}, "data-parallel + expert-parallel"),
    ({"tensor_parallel_size": 2, "expert_parallel_size": 2}, "tensor-parallel + expert-parallel"),
])
def test_a_dead_worker_is_named_by_the_layout(sizes, label):
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True)
    proc.start()
    proc.kill()
    proc.join(timeout=10)
    run = ParallelRun(0, 2, [proc], None, make_layout(**sizes))
    said = f"{label} rank 1 died (killed by SIGKILL); the run cannot continue"
    with pytest.raises(ModelchipError, match=f"^{re.escape(said)}$"):
        run.check()
    with pytest.raises(ModelchipError, match=f"^{re.escape(said)}$"):  # and the run stays ended
        run.check()
