"""The Docker engine as our sandboxes see it: one shared client, the labels every sandbox container carries,
and the sweep that finds containers a SIGKILLed process left behind (its owner pid is dead), which no in-process
hook can clean up. Split from `sandbox.py` so the CLI (`tasks sweep`) and the RL sidecar's start-up sweep need
no sandbox to use it.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import docker
import docker.errors

SANDBOX_LABEL = "north_lightning.sandbox"
OWNER_PID_LABEL = "north_lightning.owner_pid"
OWNER_HOST_LABEL = "north_lightning.owner_host"
BOX_ID_LABEL = "north_lightning.sandbox_id"


class SandboxError(RuntimeError):
    """The sandbox cannot do what was asked (container gone, Docker error)."""


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


def sweep_orphans(*, all_owners: bool = False, this_host_only: bool = False,
                  client: docker.DockerClient | None = None) -> list[str]:
    """Remove labelled containers whose owner process is gone (or every labelled one with `all_owners`).
    A container of another host counts as orphaned unless `this_host_only` (what automatic sweeps use: a Docker
    engine shared by several hosts or containers must not lose a live run's sandboxes, whose owner pid cannot be
    checked from here). Returns the removed container names."""
    client = client or docker_client()
    removed = []
    for summary in labelled_summaries(client, SANDBOX_LABEL):
        labels = summary.get("Labels") or {}
        owner_alive = False
        if this_host_only and not all_owners and labels.get(OWNER_HOST_LABEL) != socket.gethostname():
            continue
        if labels.get(OWNER_HOST_LABEL) == socket.gethostname():
            try:
                os.kill(int(labels.get(OWNER_PID_LABEL, "0")), 0)
                owner_alive = True
            except (OSError, ValueError):
                owner_alive = False
        if (all_owners or not owner_alive) and remove_container(client, summary["Id"]):
            removed.append((summary.get("Names") or [summary["Id"][:12]])[0].lstrip("/"))
    return removed


def labelled_containers(client: docker.DockerClient | None = None, owner_pid: int | None = None) -> list[str]:
    """Names of the containers (running or not) that carry our sandbox label (of one owner process)."""
    client = client or docker_client()
    labels = [SANDBOX_LABEL] + ([f"{OWNER_PID_LABEL}={owner_pid}"] if owner_pid is not None else [])
    return [(c.get("Names") or [c["Id"][:12]])[0].lstrip("/") for c in labelled_summaries(client, *labels)]
