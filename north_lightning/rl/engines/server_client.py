"""HTTP clients of one server: `OpenAIServerPolicy` (any OpenAI-compatible `/v1/completions`) and `SamplerServer`
(our `vllm serve` sampler nodes: tokens in, tokens + logprobs + per-token policy versions out, and the control
routes of an in-flight weight update).

`SamplerServer` generates through vLLM's token-in-token-out route `/inference/v1/generate` (vLLM 0.32,
`vllm/entrypoints/scale_out/token_in_token_out/`: mounted by `--enable-scale-out`), whose choices carry
`weight_versions`, contiguous spans `{version, start, end}` over the output tokens: the engine core labels each
step's outputs with its current weight version (`EngineCore._attach_weight_version`), which we set with
`/update_weight_version` at every export while generation is paused (`/pause?mode=keep` ... `/resume`). A
completion that spans an export therefore says which tokens the old and which the new weights sampled
(`Completion.versions`); `/v1/completions` does not return the spans. Each request carries `cache_salt`
`north-v<version>`, so a new request never reuses prefix-cache blocks computed by older weights (under `keep` the
cache cannot be reset while running requests hold blocks).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.engines.auth import auth_headers
from north_lightning.rl.engines.inprocess import EngineDied
from north_lightning.rl.engines.weights import WeightsWriter
from north_lightning.rl.policy import Completion

__all__ = ["OpenAIServerPolicy", "SamplerServer", "versions_from_spans"]


class OpenAIServerPolicy:
    """`Policy` over a vLLM OpenAI-compatible server: token-id prompts in, token ids + logprobs out.

    `base_url` is the server root or its OpenAI root (`http://host:8000` or `http://host:8000/v1`, the form
    `NORTH_SAMPLER_URLS` carries). An unreachable server raises `EngineDied` naming it; an HTTP error a
    `RuntimeError` with the server's message. State dicts given to `load_weights` are written under
    `weights_dir` (default: a temporary directory, i.e. only for a server on this machine)."""

    def __init__(self, base_url: str, *, model: str = "policy", model_dir: str | Path | None = None,
                 timeout: float = 600.0, policy_version: int = 0, weights_dir: str | Path | None = None,
                 api_key: str | None = None) -> None:
        url = base_url.rstrip("/")
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.model, self.model_dir, self.timeout = model, model_dir, timeout
        # `api_key`: an OpenAI-compatible endpoint that wants its own key (`humaneval generate` reads it from the
        # env); otherwise our sampler servers' run key (`rl/engines/auth.py`), when this process has one
        self._headers = {"Content-Type": "application/json", **auth_headers(api_key)}
        self.policy_version = policy_version
        self.generated_tokens = 0
        self._writer = WeightsWriter(model_dir, weights_dir, prefix="north_server_weights_")

    def _post(self, route: str, body: dict[str, Any], query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as err:  # the server answered: a bad request or a failed reload
            detail = err.read().decode(errors="replace")[:1000]
            raise RuntimeError(f"sampler server {self.base_url}{route}: HTTP {err.code}: {detail}") from err
        except OSError as err:  # refused, reset, timed out: the server is gone (or hung)
            raise EngineDied(f"sampler server {self.base_url} unreachable ({route}): {err}") from err
        return json.loads(text) if text else {}

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        out = []
        for i, prompt in enumerate(prompts):
            body = {"model": self.model, "prompt": list(prompt), "max_tokens": max_tokens,
                    "temperature": temperature, "top_p": top_p, "logprobs": 0,
                    "return_tokens_as_token_ids": True, "skip_special_tokens": False}
            if seed is not None:
                body["seed"] = seed + i
            choice = self._post("/v1/completions", body)["choices"][0]
            lp = choice["logprobs"]
            ids = [int(tok.split(":", 1)[1]) for tok in lp["tokens"]]
            out.append(Completion(token_ids=ids, logprobs=[float(x) for x in lp["token_logprobs"]],
                                  text=choice["text"], finish_reason=str(choice["finish_reason"])))
            self.generated_tokens += len(ids)
        return out

    def load_dir(self, path: str | Path) -> None:
        """Reload the server's weights in place from a checkpoint directory it can read (the CPU MoE repack
        included: `NorthWorkerExtension`); nothing else changes (prefix cache, version label)."""
        self._post("/collective_rpc", {"method": "north_reload_weights", "kwargs": {"weights_path": str(path)}})

    def reload(self, path: str | Path) -> None:
        """Reload from a checkpoint directory and drop the prefix cache; the version is unchanged."""
        self.load_dir(path)
        self.reset_prefix_cache()

    def reset_prefix_cache(self, running: bool = False) -> bool:
        """Drop the cached prefixes (after a weight change they hold KV computed with the old weights). vLLM
        refuses (False) while running requests hold blocks; `running=True` preempts them first, so they are
        recomputed from their prompt + tokens so far when generation resumes."""
        query = {"reset_running_requests": "true"} if running else None
        return bool(self._post("/reset_prefix_cache", {}, query).get("success", True))

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        """Reload from a path the server can read (shared filesystem); a state dict is written there first."""
        start = time.perf_counter()
        path = self._writer.path(weights, self.policy_version, version)
        self.reload(path)
        self._writer.loaded(path)
        self.policy_version = version
        return time.perf_counter() - start

    def is_alive(self, timeout: float = 5.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=timeout) as resp:
                return resp.status == 200
        except OSError:
            return False

    def close(self) -> None:
        self._writer.close()


def versions_from_spans(spans: list[dict[str, Any]] | None, n_tokens: int, default: int, where: str) -> list[int]:
    """One policy version per output token from vLLM's `weight_versions` spans. The label `default` (the engine
    core's before any `/update_weight_version`) and a missing list mean `default`; any other label must be the
    integer version we set, and the spans must cover the tokens exactly."""
    if not spans:
        return [default] * n_tokens
    versions: list[int] = []
    for span in spans:
        label, start, end = str(span["version"]), int(span["start"]), int(span["end"])
        if start != len(versions) or end < start:
            raise RuntimeError(f"{where}: weight_versions spans are not contiguous: {spans}")
        if label == "default":
            version = default
        else:
            try:
                version = int(label)
            except ValueError:
                raise RuntimeError(f"{where}: weight version {label!r} is not a policy version (set by another "
                                   "client of this server?)") from None
        versions += [version] * (end - start)
    if len(versions) != n_tokens:
        raise RuntimeError(f"{where}: weight_versions cover {len(versions)} tokens of {n_tokens}: {spans}")
    return versions


class SamplerServer(OpenAIServerPolicy):
    """One of our `vllm serve` sampler servers (`launch_vllm_server` or the SLURM template): generation through
    `/inference/v1/generate` with per-token versions, and the dev routes of an in-flight weight update (see the
    module docstring). `start_version` labels tokens the server reports as `default` (no version set yet)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.start_version = self.policy_version

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        out = []
        for i, prompt in enumerate(prompts):
            params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                                      "logprobs": 0, "detokenize": True, "skip_special_tokens": False}
            if seed is not None:
                params["seed"] = seed + i
            body = {"model": self.model, "token_ids": list(prompt), "sampling_params": params,
                    "output_mode": "text", "cache_salt": f"north-v{self.policy_version}"}
            try:
                choice = self._post("/inference/v1/generate", body)["choices"][0]
            except RuntimeError as err:
                if "--enable-scale-out" in str(err) or "HTTP 404" in str(err):
                    raise RuntimeError(f"{err}\nsampler server {self.base_url} lacks the token route: start it with "
                                       "--enable-scale-out (launch_vllm_server and `slurm` add it)") from err
                raise
            ids = [int(t) for t in choice["token_ids"]]
            logprobs = [float(c["logprob"]) for c in choice["logprobs"]["content"]]
            versions = versions_from_spans(choice.get("weight_versions"), len(ids), self.start_version,
                                           f"sampler server {self.base_url}")
            out.append(Completion(token_ids=ids, logprobs=logprobs, text=choice.get("text", ""),
                                  finish_reason=str(choice["finish_reason"]), versions=versions))
            self.generated_tokens += len(ids)
        return out

    def pause(self) -> None:
        """Stop scheduling with the running requests frozen in place, their KV cache kept (`/pause?mode=keep` and
        `clear_cache=false`: vLLM 0.32's default `clear_cache=true` preempts the running requests once paused,
        `EngineCore._finish_pause`, i.e. a recompute, whatever the route's docstring says); new requests queue
        until `resume`."""
        self._post("/pause", {}, {"mode": "keep", "clear_cache": "false"})

    def resume(self) -> None:
        self._post("/resume", {})

    def begin_update(self, session: str) -> None:
        """Open bucketed update session `session` (`rl/engines/worker_ext.py`); the server must stay paused until
        `finish_update(session)`. The calls of one session are idempotent on the server."""
        self._post("/collective_rpc", {"method": "north_begin_update", "kwargs": {"session": session}})

    def load_file(self, path: str | Path, session: str) -> None:
        """Load one bucket's safetensors file into the open session."""
        self._post("/collective_rpc", {"method": "north_load_file", "kwargs": {"path": str(path), "session": session}})

    def finish_update(self, session: str) -> None:
        self._post("/collective_rpc", {"method": "north_finish_update", "kwargs": {"session": session}})

    def set_weight_version(self, version: int) -> None:
        """The label of every token the server samples from now on (`/update_weight_version`)."""
        self._post("/update_weight_version", {"new_version": str(version)})
        self.policy_version = version
