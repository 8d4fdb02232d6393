"""A fleet of Docker hosts: sandboxes placed over several engines, least-loaded first, under per-host caps.

`docker_hosts:` (a key of the RL sidecar's and the eval config; `NORTH_DOCKER_HOSTS=url,url` for the CLIs) lists
engines by URL: `unix:///var/run/docker.sock`, `tcp://10.0.0.7:2375`, `ssh://user@node` (docker-py 7, through the
`ssh` binary), each a string or `{url: ..., max_sandboxes: N}`. Without it every sandbox uses the local engine
exactly as before (`docker_host.docker_client`, no cap), so a single-machine run configures nothing.

Placement: a new sandbox goes to the host with the lowest share of its cap in use (ties: fewer sandboxes, then
list order) and waits while every host is full. A host that stops answering (a sandbox call fails with a transport
error and a short ping fails too, or the monitor's ping fails twice in a row) is drained: nothing new is placed there,
and each of its live sandboxes fails its current or next call with `HostUnreachable`, which the agent loop ends as
`infra_error:host_down`, so `rl/rollout.py: run_episode_retrying` runs the episode again on another host and the
sampler's ledger still sees it end once. Containers that could not be removed while their host was down are kept
(by sandbox id) and removed when the monitor sees the host answer again; then it is placed on again.
The orphan sweep runs host by host (`DockerFleet.sweep_orphans`), each removing only this machine's and this
user's containers of dead owners (`docker_host.sweep_orphans`): other users' containers are left alone.

Images are not copied between hosts: each engine must have (or pull) the task images; a host missing one fails
the start with `SandboxError`, an infrastructure failure that is retried.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors

from north_lightning.envs.docker_host import (
    BOX_ID_LABEL,
    UNREACHABLE_ERRORS,
    HostUnreachable,
    SandboxError,
    labelled_summaries,
    remove_container,
    sweep_orphans,
)

log = logging.getLogger(__name__)
SCHEMES = ("unix", "tcp", "ssh")
DEFAULT_MAX_SANDBOXES = 8
HOSTS_ENV = "NORTH_DOCKER_HOSTS"
LOCAL_BASE_URL = "http+docker://localhost"  # what docker-py makes of a unix:// socket: an engine on this machine


class NoHostAvailable(SandboxError):
    """Every host of the fleet is drained (or all stayed full past the wait): an infrastructure failure."""


@dataclass(frozen=True)
class HostSpec:
    url: str
    max_sandboxes: int = DEFAULT_MAX_SANDBOXES


def parse_docker_hosts(entries: Any, *, where: str = "docker_hosts",
                       default_max: int = DEFAULT_MAX_SANDBOXES) -> list[HostSpec]:
    """`docker_hosts` as specs: a list of URLs / `{url, max_sandboxes}` mappings, or a comma-separated string.
    Errors name the key and the entry's index."""
    if isinstance(entries, str):
        entries = [e.strip() for e in entries.split(",") if e.strip()]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError(f"{where}: expected a non-empty list of Docker host URLs, got {entries!r}")
    specs: list[HostSpec] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            url, cap = entry, default_max
        elif isinstance(entry, dict):
            unknown = sorted(set(entry) - {"url", "max_sandboxes"})
            if unknown or "url" not in entry:
                raise ValueError(f"{where}[{i}]: expected keys url (required) and max_sandboxes, got {sorted(entry)}")
            url, cap = entry["url"], entry.get("max_sandboxes", default_max)
        else:
            raise ValueError(f"{where}[{i}]: expected a URL or {{url, max_sandboxes}}, got {entry!r}")
        parts = urlsplit(str(url))
        if parts.scheme not in SCHEMES or not (parts.netloc or parts.path):
            raise ValueError(f"{where}[{i}]: {url!r} is not a Docker host URL (unix:///path, tcp://host:port, "
                             "ssh://[user@]host)")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"{where}[{i}].max_sandboxes: expected an integer >= 1, got {cap!r}")
        if any(s.url == url for s in specs):
            raise ValueError(f"{where}[{i}]: {url!r} is listed twice")
        specs.append(HostSpec(str(url), cap))
    return specs


def engine_client(url: str, timeout: float) -> docker.DockerClient:
    """A client of the engine at `url` (raises `HostUnreachable` when it does not answer: docker-py asks the
    engine's API version on construction)."""
    try:
        return docker.DockerClient(base_url=url, timeout=timeout, max_pool_size=128,
                                   use_ssh_client=url.startswith("ssh://"))
    except (docker.errors.DockerException, *UNREACHABLE_ERRORS) as err:
        raise HostUnreachable(f"Docker host {url} does not answer: {err}") from err


def is_local_engine(client: docker.DockerClient) -> bool:
    """Whether the client talks to a unix socket, i.e. an engine on this machine (its disk can be watched)."""
    return client.api.base_url == LOCAL_BASE_URL


class DockerHost:
    """One engine of the fleet: its clients, its load and whether it is drained (guarded by the fleet's lock)."""

    def __init__(self, spec: HostSpec, fleet: "DockerFleet") -> None:
        self.spec, self.url, self.fleet = spec, spec.url, fleet
        self.active = 0  # sandboxes placed here and not yet removed
        self.placed = 0  # every placement, for the stats
        self.drained: str | None = None  # why it was drained; None while it takes sandboxes
        self.stranded: set[str] = set()  # sandbox ids whose container could not be removed while it was down
        self.boxes: weakref.WeakSet[Any] = weakref.WeakSet()  # live sandboxes (told when the host is drained)
        self.failed_pings = 0  # consecutive failed pings of the monitor
        self._client: docker.DockerClient | None = None
        self._probe: docker.DockerClient | None = None
        self._lock = threading.Lock()  # the monitor and failing sandboxes may ping at once

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = engine_client(self.url, self.fleet.timeout)
            return self._client

    def ping(self) -> str | None:
        """None when the engine answers a ping within the fleet's probe timeout, else what went wrong. A failure
        is tried once more on a fresh connection: a pooled one the engine closed while idle fails once and
        says nothing about the host."""
        with self._lock:
            for attempt in range(2):
                try:
                    if self._probe is None:
                        self._probe = engine_client(self.url, self.fleet.probe_timeout_s)
                    self._probe.ping()
                    return None
                except (HostUnreachable, docker.errors.DockerException, *UNREACHABLE_ERRORS) as err:
                    self._reset()
                    problem = f"{type(err).__name__}: {err}"
            return problem

    def reset(self) -> None:
        """Drop both clients (their pooled connections died with the host); the next use connects afresh."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        for client in (self._client, self._probe):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a dead connection pool may fail; it is dropped anyway
                    pass
        self._client = self._probe = None


class DockerFleet:
    """The hosts, placement (`acquire` / `release`), draining and the monitor thread (see the module docstring)."""

    def __init__(self, hosts: list[HostSpec], *, timeout: float = 24 * 3600, probe_timeout_s: float = 5.0,
                 probe_interval_s: float = 10.0, acquire_timeout_s: float = 3600.0, drain_after_pings: int = 2,
                 monitor: bool = True) -> None:
        self.timeout, self.probe_timeout_s, self.probe_interval_s = timeout, probe_timeout_s, probe_interval_s
        self.drain_after_pings = drain_after_pings
        self.acquire_timeout_s = acquire_timeout_s
        self.hosts = [DockerHost(spec, self) for spec in hosts]
        self._cond = threading.Condition()
        self._stop = threading.Event()
        for host in self.hosts:  # a host down from the start is drained until it answers
            problem = host.ping()
            if problem is not None:
                self.drain(host, f"no answer at start: {problem}")
        self._monitor: threading.Thread | None = None
        if monitor:
            self._monitor = threading.Thread(target=self._watch, daemon=True, name="docker-fleet-monitor")
            self._monitor.start()

    # -- placement ----------------------------------------------------------------------------------------------
    def acquire(self, box: Any = None) -> DockerHost:
        """A slot on the least-loaded host that answers; waits while all are full. Raises `NoHostAvailable` when
        every host stays drained for two probe intervals, or all stay full past `acquire_timeout_s`."""
        started = time.monotonic()
        with self._cond:
            while True:
                if self._stop.is_set():
                    raise NoHostAvailable("the Docker fleet is closed")
                up = [h for h in self.hosts if h.drained is None]
                free = [h for h in up if h.active < h.spec.max_sandboxes]
                if free:
                    host = min(free, key=lambda h: (h.active / h.spec.max_sandboxes, h.active, self.hosts.index(h)))
                    host.active += 1
                    host.placed += 1
                    if box is not None:
                        host.boxes.add(box)
                    return host
                waited = time.monotonic() - started
                limit = self.acquire_timeout_s if up else 2 * self.probe_interval_s
                if waited >= limit:
                    if not up:
                        raise NoHostAvailable("every Docker host is drained: " + "; ".join(
                            f"{h.url}: {h.drained}" for h in self.hosts))
                    raise NoHostAvailable(f"every Docker host stayed full for {waited:.0f} s "
                                          f"(caps {[h.spec.max_sandboxes for h in self.hosts]})")
                self._cond.wait(min(1.0, limit - waited))

    def release(self, host: DockerHost, box: Any = None) -> None:
        with self._cond:
            host.active -= 1
            if box is not None:
                host.boxes.discard(box)
            self._cond.notify_all()

    # -- failures -----------------------------------------------------------------------------------------------
    def report_failure(self, host: DockerHost, err: BaseException) -> bool:
        """A sandbox call on `host` failed in transport: ping it now and drain it if it does not answer.
        Returns whether the host is drained."""
        if host.drained is not None:
            return True
        problem = host.ping()
        if problem is None:
            return False
        self.drain(host, f"{type(err).__name__}: {err}; ping: {problem}")
        return True

    def drain(self, host: DockerHost, reason: str) -> None:
        """Place nothing more on `host`; its live sandboxes fail their current or next call (`HostUnreachable`)."""
        with self._cond:
            if host.drained is not None:
                return
            host.drained = reason
            boxes = list(host.boxes)
            self._cond.notify_all()
        log.warning("Docker host %s drained (%d live sandboxes re-queued as infra_error): %s", host.url,
                    len(boxes), reason)
        for box in boxes:
            box.host_down = reason

    def strand(self, host: DockerHost, box_id: str) -> None:
        """A sandbox on `host` could not be removed (the host is down): remove it when the host is back."""
        with self._cond:
            host.stranded.add(box_id)

    def check(self) -> None:
        """One round of pings: drain the hosts that failed `drain_after_pings` pings in a row (one slow answer on
        a loaded host is not a dead host), re-admit the ones that answer again (after removing what was stranded
        on them)."""
        for host in self.hosts:
            problem = host.ping()
            if problem is not None:
                host.failed_pings += 1
                if host.drained is None and host.failed_pings >= self.drain_after_pings:
                    self.drain(host, f"{host.failed_pings} pings failed: {problem}")
            else:
                host.failed_pings = 0
                if host.drained is not None:
                    self._readmit(host)

    def _readmit(self, host: DockerHost) -> None:
        host.reset()
        try:
            for box_id in list(host.stranded):
                for summary in labelled_summaries(host.client, f"{BOX_ID_LABEL}={box_id}"):
                    remove_container(host.client, summary["Id"])
                with self._cond:
                    host.stranded.discard(box_id)
        except (HostUnreachable, docker.errors.APIError, *UNREACHABLE_ERRORS) as err:
            log.warning("Docker host %s answers again but its stranded sandboxes cannot be removed yet: %s",
                        host.url, err)
            return
        with self._cond:
            was, host.drained = host.drained, None
            self._cond.notify_all()
        log.warning("Docker host %s answers again: placing sandboxes on it (was drained: %s)", host.url, was)

    def _watch(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive any one bad round
                log.exception("Docker fleet monitor round failed")

    # -- housekeeping -------------------------------------------------------------------------------------------
    def sweep_orphans(self, *, all_owners: bool = False) -> list[str]:
        """`docker_host.sweep_orphans` on every host that answers (this machine's and user's containers of dead
        owners only); a host that does not answer is skipped with a warning (its sweep happens when it is back)."""
        removed: list[str] = []
        for host in self.hosts:
            try:
                removed += sweep_orphans(all_owners=all_owners, client=host.client)
            except (HostUnreachable, *UNREACHABLE_ERRORS) as err:
                log.warning("orphan sweep skipped Docker host %s (no answer): %s", host.url, err)
        return removed

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {h.url: {"active": h.active, "placed": h.placed, "cap": h.spec.max_sandboxes,
                            "drained": h.drained, "stranded": len(h.stranded)} for h in self.hosts}

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._monitor is not None:
            self._monitor.join(timeout=self.probe_timeout_s + 1)


# ---- the process-wide fleet ---------------------------------------------------------------------------------
_FLEET: DockerFleet | None = None
_CONFIGURED = False
_FLEET_LOCK = threading.Lock()


def configure_docker_hosts(hosts: Any, **settings: Any) -> DockerFleet | None:
    """Set the fleet every sandbox started without an explicit client is placed on; `hosts` None or empty: the
    local engine (the default). `settings`: `DockerFleet` keywords (probe_interval_s, acquire_timeout_s, ...)."""
    global _FLEET, _CONFIGURED
    specs = parse_docker_hosts(hosts) if hosts else None
    with _FLEET_LOCK:
        if _FLEET is not None:
            _FLEET.close()
        _FLEET = DockerFleet(specs, **settings) if specs else None
        _CONFIGURED = True
        return _FLEET


def current_fleet() -> DockerFleet | None:
    """The configured fleet; unconfigured, the one `NORTH_DOCKER_HOSTS` names (read once), else None."""
    global _FLEET, _CONFIGURED
    with _FLEET_LOCK:
        if not _CONFIGURED:
            _CONFIGURED = True
            value = os.environ.get(HOSTS_ENV, "").strip()
            if value:
                _FLEET = DockerFleet(parse_docker_hosts(value, where=HOSTS_ENV))
        return _FLEET
