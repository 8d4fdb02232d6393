"""`SubprocessVLLMEngine`: the stepped in-process engine (`rl/engines/stepped.py`) in a child process.

A crash there (OOM kill, segfault) raises `EngineDied` here instead of taking the trainer down, and `restart()`
brings a fresh engine up on the last exported weights. The engine runs off the trainer's GIL.

The pipe carries request ids: every `generate` call and every `load_weights` is a message with its own id, served
by its own thread in the child and answered when done, so many turns are in flight at once (they run as
concurrent vLLM requests) and an export reaches the engine while they run, to be applied per
`weight_update_mode` (keep / recompute / drain). Weights travel as a safetensors directory
(`rl/engines/weights.py`).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.engines.inprocess import EngineDied, SampleSpec
from north_lightning.rl.engines.weights import WeightsWriter
from north_lightning.rl.policy import Completion

log = logging.getLogger(__name__)


def _child_main(conn: Any, model_dir: str, kwargs: dict[str, Any]) -> None:
    """The child: one thread per request, replies tagged with the request id (sends serialised by a lock)."""
    from north_lightning.rl.engines.stepped import SteppedVLLMEngine

    engine = SteppedVLLMEngine(model_dir, **kwargs)
    send_lock = threading.Lock()

    def reply(rid: int, status: str, payload: Any) -> None:
        with send_lock:
            conn.send((rid, status, payload))

    def serve(rid: int, op: str, payload: Any) -> None:
        try:
            if op == "generate":
                result: Any = engine.generate_specs([SampleSpec(*spec) for spec in payload])
            elif op == "load_weights":
                result = engine.load_weights(payload["path"], payload["version"])
            elif op == "metrics":
                result = engine.metrics(wait_s=payload)
            else:
                raise ValueError(f"unknown engine op {op!r}")
            reply(rid, "ok", result)
        except EngineDied as err:
            reply(rid, "died", str(err))
        except Exception as err:  # reported to the parent, which raises it
            reply(rid, "error", f"{type(err).__name__}: {err}")

    reply(-1, "ready", None)
    while True:
        rid, op, payload = conn.recv()
        if op == "close":
            engine.close()
            reply(rid, "ok", None)
            return
        threading.Thread(target=serve, args=(rid, op, payload), daemon=True).start()


class SubprocessVLLMEngine:
    """`Policy` over a `SteppedVLLMEngine` in a child process; engine kwargs (weight_update_mode,
    stale_kv_samples, max_model_len, ...) go to it."""

    def __init__(self, model_dir: str | Path, *, start_timeout: float = 300.0, **engine_kwargs: Any) -> None:
        self.model_dir = str(model_dir)
        self.engine_kwargs = engine_kwargs
        self.start_timeout = start_timeout
        self.policy_version = int(engine_kwargs.get("policy_version", 0))
        self._writer = WeightsWriter(self.model_dir, prefix="north_engine_weights_")
        self._current_dir = self.model_dir
        self._ids = itertools.count()
        self._lock = threading.Lock()  # guards the pipe's send side and the pending table
        self._update_lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        kwargs = dict(self.engine_kwargs, policy_version=self.policy_version)
        self.process = ctx.Process(target=_child_main, args=(child, self._current_dir, kwargs), daemon=True)
        self.process.start()
        child.close()
        if not self._conn.poll(self.start_timeout):
            self._kill()
            raise EngineDied(f"vLLM engine subprocess did not start within {self.start_timeout:.0f} s")
        try:
            self._conn.recv()  # (-1, "ready", None)
        except (EOFError, ConnectionResetError, BrokenPipeError) as err:
            raise EngineDied(f"vLLM engine subprocess died at start (exit code {self.process.exitcode})") from err
        self._reader = threading.Thread(target=self._read, args=(self._conn,), name="north-engine-pipe", daemon=True)
        self._reader.start()

    def _read(self, conn: Any) -> None:
        """Resolve each reply's future; when the pipe breaks, every pending call gets `EngineDied`."""
        while True:
            try:
                rid, status, payload = conn.recv()
            except (EOFError, ConnectionResetError, BrokenPipeError, OSError):
                break
            with self._lock:
                future = self._pending.pop(rid, None)
            if future is None:
                continue
            if status == "ok":
                future.set_result(payload)
            elif status == "died":
                future.set_exception(EngineDied(f"vLLM engine subprocess: {payload}"))
            else:
                future.set_exception(RuntimeError(f"vLLM engine subprocess: {payload}"))
        with self._lock:
            pending = [f for f in self._pending.values()]
            self._pending.clear()
        for future in pending:
            future.set_exception(EngineDied(f"vLLM engine subprocess died (exit code {self.process.exitcode})"))

    def _call(self, op: str, payload: Any) -> Any:
        future: Future = Future()
        with self._lock:
            if not self.process.is_alive():
                raise EngineDied(f"vLLM engine subprocess is dead (exit code {self.process.exitcode})")
            rid = next(self._ids)
            self._pending[rid] = future
            try:
                self._conn.send((rid, op, payload))
            except (BrokenPipeError, OSError) as err:
                self._pending.pop(rid, None)
                raise EngineDied("vLLM engine subprocess pipe closed") from err
        return future.result()

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        """Thread-safe; every call is its own set of vLLM requests in the child, running beside the others."""
        specs = [SampleSpec(list(p), max_tokens, temperature, top_p, None if seed is None else seed + i)
                 for i, p in enumerate(prompts)]
        return self._call("generate", [tuple(s) for s in specs])

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        """Write (or take) the export directory and have the child swap to it while generation goes on."""
        start = time.perf_counter()
        with self._update_lock:
            path = self._writer.path(weights, self.policy_version, version)
            self._call("load_weights", {"path": path, "version": version})
            self.policy_version = version
            self._writer.loaded(path)
            self._current_dir = path  # what a restart starts from
        return time.perf_counter() - start

    def metrics(self, wait_s: float = 0.0) -> dict[str, float]:
        """The child engine's stale-KV figures since the last call (see `SteppedVLLMEngine.metrics`)."""
        return self._call("metrics", wait_s)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def restart(self) -> None:
        """Start a fresh engine on the last exported weights (same policy version)."""
        self._kill()
        self._reader.join(timeout=30)
        self.restarts += 1
        self._start()

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=30)

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._call("close", None)
            except (EngineDied, RuntimeError):
                pass
            self.process.join(timeout=30)
        self._kill()
        self._reader.join(timeout=30)
        self._conn.close()
        self._writer.close()
