"""The Docker engine as our sandboxes see it: one shared client, the labels every sandbox container carries,
and the sweep that finds containers a SIGKILLed process left behind (its owner is dead), which no in-process
hook can clean up. Split from `sandbox.py` so the CLI (`tasks sweep`) and the RL sidecar's start-up sweep need
no sandbox to use it.

On a shared host the engine holds other users' and other hosts' sandboxes too, so the sweep only ever looks at
containers whose labels name this host and this user, and an owner counts as dead only when it provably is:
`kill(pid, 0)` says ESRCH, or the pid is alive but started at another time than the one labelled (a reused pid).
EPERM means the process exists (it belongs to someone else), so it is alive.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

SANDBOX_LABEL = "north_lightning.sandbox"
OWNER_PID_LABEL = "north_lightning.owner_pid"
OWNER_HOST_LABEL = "north_lightning.owner_host"
OWNER_UID_LABEL = "north_lightning.owner_uid"
OWNER_START_LABEL = "north_lightning.owner_start"  # /proc/<pid>/stat starttime (clock ticks after boot)
BOX_ID_LABEL = "north_lightning.sandbox_id"


class SandboxError(RuntimeError):
    """The sandbox cannot do what was asked (container gone, Docker error)."""


class HostUnreachable(SandboxError):
    """The Docker engine a sandbox runs on stopped answering (connection refused / reset, or its fleet drained
    it): an infrastructure failure, never the policy's doing."""


# What a client raises when its engine does not answer (docker-py lets the transport's errors through)
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError, requests.exceptions.Timeout, urllib3.exceptions.ProtocolError,
    ConnectionError, TimeoutError)
HOST_LABEL = "north_lightning.docker_host"  # the fleet host a sandbox was placed on (its URL)


_CLIENT: docker.DockerClient | None = None
_CLIENT_LOCK = threading.Lock()


def docker_client() -> docker.DockerClient:
    """One process-wide client: a long socket timeout (commands may be silent for minutes) and a connection
    pool large enough for many concurrent sandboxes."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            try:
                _CLIENT = docker.from_env(timeout=24 * 3600, max_pool_size=128)
                _CLIENT.ping()
            except docker.errors.DockerException as err:
                _CLIENT = None
                raise SandboxError(
                    f"cannot reach a Docker engine ({err}); run `bash scripts/ensure_docker.sh` (or `make docker`)"
                ) from err
        return _CLIENT


def labelled_summaries(client: docker.DockerClient, *labels: str) -> list[dict[str, Any]]:
    """Containers carrying all `labels` (`key` or `key=value`), as the engine's summaries. The low-level
    listing does not inspect each container, so one removed meanwhile cannot make it fail."""
    return client.api.containers(all=True, filters={"label": list(labels)})


def remove_container(client: docker.DockerClient, container_id: str) -> bool:
    try:
        client.api.remove_container(container_id, force=True)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as err:
        if "already in progress" in str(err):
            return False
        raise


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks after boot), or None where
    it cannot be read. With the pid it names one process: a pid reused after its owner died has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def owner_labels(pid: int | None = None) -> dict[str, str]:
    """The labels naming a container's owner: this host, this user, the pid and its start time."""
    pid = os.getpid() if pid is None else pid
    labels = {OWNER_PID_LABEL: str(pid), OWNER_HOST_LABEL: socket.gethostname(), OWNER_UID_LABEL: str(os.getuid())}
    started = process_start_time(pid)
    if started is not None:
        labels[OWNER_START_LABEL] = started
    return labels


def owner_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether the process `pid` (started at `start_time`, when known) still runs on this host. EPERM is an
    answer too: the process exists but belongs to another user."""
    if pid <= 0:  # kill(0 or -n, 0) would probe process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start_time is not None:
        actual = process_start_time(pid)
        if actual is not None and actual != start_time:
            return False  # the pid was reused by a process that started later
    return True


def is_ours(labels: dict[str, str]) -> bool:
    """Whether a sandbox container was started on this host by this user (the only ones a sweep may touch)."""
    return (labels.get(OWNER_HOST_LABEL) == socket.gethostname()
            and labels.get(OWNER_UID_LABEL) == str(os.getuid()))


def sweep_orphans(*, all_owners: bool = False, client: docker.DockerClient | None = None) -> list[str]:
    """Remove this host's and this user's sandbox containers whose owner process is gone (or all of them, live
    owners included, with `all_owners`). Containers of other users or hosts are never touched: their owners
    cannot be checked from here. Returns the removed container names."""
    client = client or docker_client()
    removed = []
    for summary in labelled_summaries(client, SANDBOX_LABEL):
        labels = summary.get("Labels") or {}
        if not is_ours(labels):
            continue
        try:
            alive = owner_alive(int(labels.get(OWNER_PID_LABEL, "")), labels.get(OWNER_START_LABEL))
        except ValueError:
            alive = False  # ours, but no owner pid: nothing can still be using it
        if (all_owners or not alive) and remove_container(client, summary["Id"]):
            removed.append((summary.get("Names") or [summary["Id"][:12]])[0].lstrip("/"))
    return removed


def labelled_containers(client: docker.DockerClient | None = None, owner_pid: int | None = None) -> list[str]:
    """Names of the containers (running or not) that carry our sandbox label (of one owner process)."""
    client = client or docker_client()
    labels = [SANDBOX_LABEL] + ([f"{OWNER_PID_LABEL}={owner_pid}"] if owner_pid is not None else [])
    return [(c.get("Names") or [c["Id"][:12]])[0].lstrip("/") for c in labelled_summaries(client, *labels)]
