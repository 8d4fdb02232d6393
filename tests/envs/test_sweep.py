"""The orphan sweep on a shared host: it removes this user's containers whose owner is provably dead and nothing
else. Every container here carries a per-test scope label and every sweep here is narrowed to that label, so the
tests never touch the sandboxes other processes run on the same engine at the same time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from helpers import require
from north_lightning.envs import docker_host
from north_lightning.envs.docker_host import (
    OWNER_HOST_LABEL,
    OWNER_PID_LABEL,
    SANDBOX_LABEL,
    docker_client,
    process_start_time,
    sweep_orphans,
)

pytestmark = pytest.mark.docker

SCOPE_LABEL = "north_lightning.test_scope"
OTHER_UID = 65534  # nobody
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scope(docker_ready, monkeypatch):
    """A fresh scope label; sweeps in this process only see containers carrying it."""
    token = uuid.uuid4().hex
    listing = docker_host.labelled_summaries
    monkeypatch.setattr(docker_host, "labelled_summaries",
                        lambda client, *labels: listing(client, *labels, f"{SCOPE_LABEL}={token}"))
    yield token
    client = docker_client()
    for c in client.api.containers(all=True, filters={"label": f"{SCOPE_LABEL}={token}"}):
        client.api.remove_container(c["Id"], force=True)


def _container(base_image: str, token: str, **owner: str) -> str:
    labels = {SANDBOX_LABEL: "1", SCOPE_LABEL: token, **owner}
    return docker_client().api.create_container(base_image, command=["true"], labels=labels)["Id"]


def _exists(container_id: str) -> bool:
    return bool(docker_client().api.containers(all=True, filters={"id": container_id}))


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def _owner(pid: int, uid: int | None = None, start: str | None = None) -> dict[str, str]:
    labels = {OWNER_PID_LABEL: str(pid), OWNER_HOST_LABEL: socket.gethostname(),
              "north_lightning.owner_uid": str(os.getuid() if uid is None else uid)}
    if start is not None:
        labels["north_lightning.owner_start"] = start
    return labels


def test_sweep_removes_only_this_users_dead_owners_on_this_host(base_image, scope):
    dead = _dead_pid()
    mine_dead = _container(base_image, scope, **_owner(dead))
    other_users = _container(base_image, scope, **_owner(dead, uid=os.getuid() + 4242))
    other_hosts = _container(base_image, scope, **{**_owner(dead), OWNER_HOST_LABEL: f"not-{socket.gethostname()}"})
    mine_alive = _container(base_image, scope, **_owner(os.getpid(), start=process_start_time(os.getpid())))
    removed = sweep_orphans()
    assert len(removed) == 1 and not _exists(mine_dead)
    assert _exists(other_users) and _exists(other_hosts) and _exists(mine_alive)
    sweep_orphans(all_owners=True)  # `tasks sweep --all`: every one of ours, still never another user's/host's
    assert not _exists(mine_alive) and _exists(other_users) and _exists(other_hosts)


def test_sweep_takes_a_reused_pid_for_a_dead_owner(base_image, scope):
    """The labelled pid runs, but it is a later process than the owner (its start time differs)."""
    started = process_start_time(os.getpid())
    assert started is not None and started.isdigit()
    reused = _container(base_image, scope, **_owner(os.getpid(), start=str(int(started) - 1)))
    owner = _container(base_image, scope, **_owner(os.getpid(), start=started))
    sweep_orphans()
    assert not _exists(reused) and _exists(owner)


_SWEEP_AS_USER = textwrap.dedent("""
    import sys
    from north_lightning.envs import docker_host
    listing = docker_host.labelled_summaries
    docker_host.labelled_summaries = lambda client, *labels: listing(client, *labels, sys.argv[1])
    print("removed", docker_host.sweep_orphans())
""")


def test_eperm_means_the_owner_is_alive(base_image, scope):
    """A non-root user's sweep sees a container labelled with its uid whose pid is a live process of another
    user (here: this root test process): `kill(pid, 0)` fails with EPERM, which means alive."""
    require(os.getuid() == 0, "running the sweep as another user needs root")
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    live = _container(base_image, scope, **_owner(os.getpid(), uid=OTHER_UID, start=process_start_time(os.getpid())))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp"}
    run = subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", f"--groups={docker_gid}",
                          sys.executable, "-c", _SWEEP_AS_USER, f"{SCOPE_LABEL}={scope}"],
                         capture_output=True, text=True, env=env, timeout=120, cwd="/tmp")
    assert run.returncode == 0, run.stderr
    assert "removed []" in run.stdout
    assert _exists(live)
