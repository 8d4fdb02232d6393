"""`ServerPool`: the `Policy` over several `vllm serve` sampler servers (`VLLMSidecar(engine="servers")`).

The pieces live apart: `launch.py` starts and stops one server (tests, single machine; the SLURM template on a
cluster), `server_client.py` talks to one server (`SamplerServer`: token route with per-token versions, and the
pause / resume / version routes; `OpenAIServerPolicy` for any OpenAI endpoint), `affinity.py` keeps each episode
on one server, `weight_transfer.py` + `nccl_group.py` move the weights (`files` through shared storage, or one
NCCL broadcast from trainer rank 0 to every server). Re-exported here for the callers that import them from here.

Weight updates (`weight_update_mode`, the sidecar key of the same name; the trainer-side engines' modes are
alike, `rl/engines/stepped.py`, but there we step vLLM ourselves; here the servers do it on their own):
- `keep` (default, in-flight, PipelineRL's choice): at an export every server is paused with its running
  requests frozen and their KV cache kept (`/pause?mode=keep`), reloads, gets the new version label
  (`/update_weight_version`) and resumes (`/resume`); nothing is drained, so a turn that was generating goes on
  under the new weights from where it stood, its earlier tokens labelled with the old version and the rest with
  the new (`Completion.versions`). The kept KV was computed by the old weights: the tokens after the update are
  sampled from the new weights on a partly stale prefix, and their logprobs are what the sampler saw (CISPO's
  ratio anchors on them). Only new calls wait while an update runs (a reload, not a whole turn), so each new
  request carries the version it will run under (its `cache_salt`, no stale prefix-cache hit).
- `recompute`: as `keep`, but before resuming the running requests are preempted and their cache dropped
  (`/reset_prefix_cache?reset_running_requests=true`), so vLLM recomputes their prompt + tokens so far under the
  new weights: each token's logprob is that of its own version's weights on its full prefix, at the price of a
  prefill per running request per export.
- `drain`: the old behaviour, for comparison: new calls wait, the export waits for every call in flight, then
  the servers reload with nothing running and drop their prefix cache. One call never mixes two versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.engines.affinity import AffinityTable, Route, current_route
from north_lightning.rl.engines.inprocess import EngineDied
from north_lightning.rl.engines.launch import launch_vllm_server, stop_vllm_server
from north_lightning.rl.engines.nccl_group import NCCLGroup
from north_lightning.rl.engines.server_client import OpenAIServerPolicy, SamplerServer
from north_lightning.rl.engines.stepped import UPDATE_MODES, check_update_mode
from north_lightning.rl.engines.weight_transfer import parse_weight_transfer, require_cuda
from north_lightning.rl.engines.weights import WeightsWriter, check_version
from north_lightning.rl.policy import Completion

__all__ = ["launch_vllm_server", "stop_vllm_server", "OpenAIServerPolicy", "SamplerServer", "ServerPool",
           "UPDATE_MODES", "check_update_mode"]

log = logging.getLogger(__name__)


class _Update:
    """One update of some servers of a pool: the errors so far (per server index), and the servers that took it."""

    def __init__(self, pool: ServerPool, indices: list[int]) -> None:
        self.pool, self.indices = pool, indices
        self.errors: dict[int, BaseException | None] = {}
        self.taken: list[int] = []

    def ok(self) -> list[int]:
        return [i for i in self.indices if self.errors.get(i) is None]

    def each(self, call: Callable[[int], None]) -> None:
        """`call(i)` on every server still without an error, at once."""
        self.errors.update(self.pool._each(self.ok(), call))


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
    `rl/engines/weight_transfer.py`): one broadcast from this process's GPU to every live server
    (`rl/engines/nccl_group.py`); dead servers that answer `/health` again rejoin at the next export; nothing is
    written. How running calls live through an export: `weight_update_mode` (module docstring).

    `bucketed_reload` (files only, default on): the sidecar's exports go through `streamed_update`, the servers
    loading each bucket's file while the trainer gathers the next (off: the whole directory once written).

    Counters: `spanning_completions` (completions whose tokens came from more than one version) and
    `tokens_after_update` (their tokens sampled after the first update they spanned).
    """

    def __init__(self, urls: list[str], *, model_dir: str | Path, weights_dir: str | Path,
                 policy_version: int = 0, model: str = "policy", timeout: float = 600.0,
                 weight_transfer: str = "files", nccl: Mapping[str, Any] | None = None,
                 weight_update_mode: str = "keep", bucketed_reload: bool | None = None) -> None:
        if not urls:
            raise ValueError("ServerPool needs at least one server URL")
        settings = parse_weight_transfer(weight_transfer, nccl)
        if bucketed_reload and settings is not None:
            raise ValueError("engine_kwargs.bucketed_reload applies to weight_transfer: files (with nccl the "
                             "directory is broadcast once written)")
        # the sidecar exports through `streamed_update` when this is set (files: default on)
        self.bucketed_reload = settings is None if bucketed_reload is None else bool(bucketed_reload)
        self.mode = check_update_mode(weight_update_mode)
        self.weight_transfer = weight_transfer
        self.servers = [SamplerServer(u, model=model, model_dir=model_dir, timeout=timeout,
                                      policy_version=policy_version) for u in urls]
        self.policy_version = policy_version
        self._nccl: NCCLGroup | None = None
        self._resend: str | None = None  # nccl: a directory that holds the servers' current weights, if any
        if settings is not None:
            require_cuda()
            self._nccl = NCCLGroup(settings, [s.base_url for s in self.servers])
        else:
            Path(weights_dir).mkdir(parents=True, exist_ok=True)
        self._writer = WeightsWriter(model_dir, weights_dir)
        self.dead: dict[str, str] = {}  # base URL -> why
        self.calls = [0] * len(self.servers)  # calls served per server (for tests and logs)
        self.affinity = AffinityTable(len(self.servers))
        self.spanning_completions = self.tokens_after_update = 0
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
            self._nccl.forget(i)  # a restarted server is a new process: the next transfer joins it anew

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
            out = self.servers[i].generate(prompts, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                           seed=seed)
        except EngineDied as err:
            self._mark_dead(i, err)
            raise
        finally:
            self._release(i)
        for comp in out:
            if comp.versions and comp.versions[0] != comp.versions[-1]:
                with self._cond:
                    self.spanning_completions += 1
                    self.tokens_after_update += sum(v != comp.versions[0] for v in comp.versions)
        return out

    def _each(self, indices: list[int], call: Callable[[int], None]) -> dict[int, BaseException | None]:
        """`call(i)` for every server index at once; each one's exception (None when it went through)."""
        if not indices:
            return {}
        with ThreadPoolExecutor(max_workers=len(indices), thread_name_prefix="sampler-update") as pool:
            futures = {i: pool.submit(call, i) for i in indices}
        return {i: fut.exception() for i, fut in futures.items()}

    @contextmanager
    def _updating(self, indices: list[int], version: int) -> Iterator[_Update]:
        """The frame of one update of the given servers, as `weight_update_mode` says: paused (`keep`,
        `recompute`) around the body, which loads the weights through `update.each`; then the cache rule and the
        version label, and every paused server resumed whatever happened. Afterwards `update.taken` holds the
        servers that took it; unreachable ones are marked dead, any other failure raises naming the server."""
        update = _Update(self, indices)
        inflight = self.mode != "drain"
        if inflight:
            update.each(lambda i: self.servers[i].pause())
        paused = update.ok() if inflight else []
        try:
            yield update
            update.each(lambda i: self._label(i, version))
        finally:
            if paused:  # always resume: a paused server would hold its requests forever
                for i, err in self._each(paused, lambda i: self.servers[i].resume()).items():
                    if err is not None and update.errors.get(i) is None:
                        update.errors[i] = err
        for i in indices:
            err = update.errors.get(i)
            if isinstance(err, EngineDied):
                self._mark_dead(i, err)
            elif err is not None:
                raise RuntimeError(f"weight reload failed on {self.servers[i].base_url}: {err}") from err
            else:
                update.taken.append(i)

    def _load(self, indices: list[int], weights: Mapping[str, torch.Tensor] | str, version: int) -> list[int]:
        """Put `weights` (a directory; with NCCL also a state dict) into the given servers (`_updating`); returns
        those that took it. Files: each server reloads the directory, concurrently; NCCL: one broadcast to all."""
        if not indices:
            return []
        with self._updating(indices, version) as update:
            if self._nccl is None:
                update.each(lambda i: self.servers[i].load_dir(str(weights)))
            elif update.ok():
                update.errors.update(self._nccl.send(update.ok(), weights))
        return update.taken

    @contextmanager
    def streamed_update(self, version: int, directory: str | Path) -> Iterator[Callable[[str | Path], None]]:
        """A bucket-by-bucket export (`weight_transfer: files`): yields `load_file(path)`, to be called with each
        bucket's safetensors file as soon as it is written under `directory` (`model/gather.py:
        write_hf_streaming(on_file=...)`); the servers load it in a background thread, in order, while the
        trainer gathers the next buckets, instead of after the whole directory. The servers stay paused from the
        first bucket to the last (`keep` and `recompute`; under `drain` nothing runs anyway): a bucketed session is
        one in-place reload spread over the gather (`rl/engines/worker_ext.py`), so the sampler waits for the whole
        gather where a whole-directory reload pauses it only for the reload, and the trainer waits for max(gather,
        load) instead of their sum. `directory` is what a restarted server reloads later."""
        if self._nccl is not None:
            raise ValueError("streamed_update is for weight_transfer: files (nccl broadcasts from rank 0's GPU)")
        check_version(self.policy_version, version)
        with self._paused(drain=self.mode == "drain"):
            with self._updating(self._live(), version) as update:
                session = f"v{version}"
                update.each(lambda i: self.servers[i].begin_update(session))
                # one loader thread, files in order: the caller goes on gathering the next bucket meanwhile
                loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler-bucket-load")
                try:
                    yield lambda path: loader.submit(update.each, lambda i: self.servers[i].load_file(path, session))
                finally:  # also after a failed gather: the layers must leave the meta device
                    loader.shutdown(wait=True)
                    update.each(lambda i: self.servers[i].finish_update(session))
            if not update.taken:
                raise EngineDied(self._dead_message())
            self._writer.loaded(str(directory))
            self._resend = str(directory)
        self.policy_version = version

    def _label(self, i: int, version: int) -> None:
        """After the reload: the cache rule of the mode, then the version label of the tokens to come."""
        server = self.servers[i]
        if self.mode == "recompute" and not server.reset_prefix_cache(running=True):
            raise RuntimeError("could not drop the running requests' KV cache for recomputation")
        if self.mode == "drain":
            server.reset_prefix_cache()  # nothing runs: KV of the old weights must not serve new prompts
        server.set_weight_version(version)

    @contextmanager
    def _paused(self, drain: bool = True) -> Iterator[None]:
        """No call starting while the body runs; with `drain`, none in flight either (exports under `drain`,
        re-admissions). Without it, calls in flight go on (in-flight updates: the servers pause them)."""
        with self._cond:
            while self._exporting:
                self._cond.wait()
            self._exporting = True
            while drain and any(self._inflight):
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
        with self._paused(drain=self.mode == "drain"):
            if not self._load(self._live(), str(path), self.policy_version):
                raise EngineDied(self._dead_message())
            self._writer.loaded(str(path))
            self._resend = str(path)

    def load_weights(self, weights: Mapping[str, torch.Tensor] | str | Path, version: int) -> float:
        start = time.perf_counter()
        if self._nccl is None:
            path = self._writer.path(weights, self.policy_version, version)  # written once, outside the pause
            with self._paused(drain=self.mode == "drain"):
                if not self._load(self._live(), path, version):
                    raise EngineDied(self._dead_message())
                self._writer.loaded(path)
                self._resend = path
        else:
            check_version(self.policy_version, version)
            with self._paused(drain=self.mode == "drain"):
                back = [i for i in range(len(self.servers)) if self.servers[i].base_url in self.dead
                        and self.servers[i].is_alive()]
                ok = self._load(self._live() + back, weights if isinstance(weights, Mapping) else str(weights),
                                version)
                if not ok:
                    raise EngineDied(self._dead_message())
                self._readmit([i for i in back if i in ok])
                self._resend = None if isinstance(weights, Mapping) else str(weights)
        self.policy_version = version
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
                # a restarted server holds its start weights; with NCCL the live ones join the new group too
                live = self._live() if self._nccl is not None else []
                back = [i for i in self._load(live + back, current, self.policy_version) if i in back]
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
