"""`AsyncEngine`: one thread owns the `LLMEngine` and steps it while there is work; other threads (the server's
event loop) talk to it only through a command queue and per-request output callbacks.

`run()` drives the engine on the calling thread, `start()` on a background thread. The server uses `run()` on
the main thread and puts the HTTP event loop on a background thread instead, because of how PyTorch's OpenMP
pool behaves on CPU: its worker threads spin-wait between parallel regions only for the process's initial
thread, so the same model steps 2-3x slower when driven from any other thread (measured: 16-sequence decode
step 115 ms on the main thread, 345 ms on a second thread; batch 1: 35 vs 65 ms).

Commands are applied between steps, so an abort frees its blocks before the next step is scheduled. A step that
raises fails the requests in flight (each gets an output with `finish_reason="error"`) and the thread goes on
serving new requests.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import torch

from modelchip.engine.llm_engine import LLMEngine, RequestOutput
from modelchip.engine.sampling_params import SamplingParams

log = logging.getLogger("modelchip.engine")

Sink = Callable[[RequestOutput], None]


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self._unapplied_adds = 0  # requests sent but not yet in the engine's queue
        self._adds_lock = threading.Lock()

    def start(self) -> None:
        """Step the engine on a background thread (convenient; slower on CPU backends, see above)."""
        self._thread = threading.Thread(target=self.run, name="modelchip-engine", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Step the engine on this thread until `stop()`."""
        self._running.set()
        try:
            self._loop()
        finally:
            self._running.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._commands.put(("wake",))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._running.is_set()

    @property
    def num_waiting(self) -> int:
        """Requests not yet scheduled: the engine's waiting queue and those sent to it but not yet applied."""
        return self.engine.num_waiting + self._unapplied_adds

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> None:
        """Queue a request; `sink` is called from the engine thread with every output of its completions, the
        last one `request_finished`."""
        with self._adds_lock:
            self._unapplied_adds += 1
        self._commands.put(("add", request_id, prompt_ids, params, sink))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    # -- the engine thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stopping.is_set():
                idle = not self.engine.has_unfinished_requests()
                try:
                    # a timeout keeps an idle main thread responsive to signals
                    self._apply(self._commands.get(block=idle, timeout=0.5 if idle else None))
                    while True:
                        self._apply(self._commands.get_nowait())
                except queue.Empty:
                    pass
                if self._stopping.is_set() or not self.engine.has_unfinished_requests():
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as exc:  # a failing step must not take the server down with it
                    self.errors += 1
                    log.exception("engine step failed; failing the requests in flight")
                    outputs = self.engine.fail_all(f"internal error in the engine: {type(exc).__name__}: {exc}")
                for out in outputs:
                    self._deliver(out)

    def _apply(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, request_id, prompt_ids, params, sink = command
            try:
                self.engine.add_request(request_id, prompt_ids, params)
            except Exception as exc:  # the server checks requests first; this is the last line of defence
                sink(RequestOutput(request_id, finished=True, finish_reason="error", error=str(exc)))
                return
            finally:
                with self._adds_lock:
                    self._unapplied_adds -= 1
            self._sinks[request_id] = sink
        elif kind == "abort":
            out = self.engine.abort_request(command[1])
            if out is not None:
                self._deliver(out)

    def _deliver(self, out: RequestOutput) -> None:
        # a request with n completions ends with the last of them
        sink = self._sinks.pop(out.request_id, None) if out.request_finished else self._sinks.get(out.request_id)
        if sink is None:
            return
        try:
            sink(out)
        except Exception:  # a broken consumer (closed event loop) must not stop the engine
            log.exception("delivering output of request %s failed", out.request_id)
