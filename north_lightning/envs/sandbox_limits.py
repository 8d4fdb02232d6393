"""What a sandbox may use and who it runs as: `SandboxConfig`, the container options they become (memory, CPU,
pids, network, capabilities, the disk bound), and the floor on the engine's free disk space.

Capabilities: every one is dropped but `KEPT_CAPABILITIES`. They matter only to processes running as root in the
container (the grader's steps, and tasks that say `user = "root"`): the agent runs as a non-root user by
default, with `no-new-privileges`, so it holds none and cannot gain any. Users are switched by the engine (the
`user` of each exec), never by `su`/`setpriv` inside, so SETUID/SETGID are not kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import docker

from north_lightning.envs.disk import default_disk_mb
from north_lightning.envs.docker_host import SandboxError
from north_lightning.envs.tasks import AGENT_USER

# Each kept capability, and why root steps in the container need it:
CAPABILITY_REASONS = {
    "CHOWN": "the grader and setup steps run as root in an agent-owned workdir: git, tar and pip set owners",
    "DAC_OVERRIDE": "root steps read and write the agent's files whatever their modes (tests, patches, rewards)",
    "FOWNER": "root steps chmod / utime files they do not own (git checkout, patch, tar -p in the workdir)",
    "KILL": "root steps end processes the agent left running under its own uid (test harness clean-up)",
}
KEPT_CAPABILITIES = tuple(CAPABILITY_REASONS)


class HostDiskLow(SandboxError):
    """The Docker engine's disk has less free space than `min_host_free_mb`: an infrastructure failure."""


class EpisodeTimeout(SandboxError):
    """The episode's wall-clock budget is spent; the caller ends the episode with reason `episode_timeout`."""


@dataclass
class SandboxConfig:
    """Limits and identity of one sandbox. Tasks fill it from their `[environment]` / `[agent]` tables."""

    image: str
    cpus: float = 1.0
    memory_mb: int = 1024
    pids_limit: int = 256
    allow_internet: bool = False
    user: str = AGENT_USER  # who commands run as by default; tasks that need root say so (`user = "root"`)
    workdir: str = "/app"
    command_timeout_sec: float = 60.0
    episode_timeout_sec: float = 900.0
    max_output_bytes: int = 64_000
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # the engine's disk (its data root) must keep this much free: below it no sandbox starts and running ones
    # refuse commands with `HostDiskLow`, an infrastructure failure, before a writing agent fills the host
    min_host_free_mb: int = 2048
    # everything the container can write (its whole writable layer) is bounded to this many MB: writes past it
    # get ENOSPC inside the container (envs/disk.py). Default: $NORTH_SANDBOX_DISK_MB, else 4096; 0 or None:
    # unbounded, only when asked for
    disk_mb: int | None = field(default_factory=default_disk_mb)


def container_options(cfg: SandboxConfig) -> dict[str, Any]:
    """The `containers.create` keyword arguments of the config's limits and privileges."""
    return dict(
        network_mode="bridge" if cfg.allow_internet else "none",
        mem_limit=f"{cfg.memory_mb}m", memswap_limit=f"{cfg.memory_mb}m",
        nano_cpus=int(cfg.cpus * 1e9), pids_limit=cfg.pids_limit,
        working_dir=cfg.workdir, environment=cfg.env, hostname="sandbox",
        security_opt=["no-new-privileges"], cap_drop=["ALL"], cap_add=list(KEPT_CAPABILITIES),
    )


_DATA_ROOT: dict[int, str | None] = {}


def engine_data_root(client: docker.DockerClient) -> str | None:
    """The engine's data root when it is on this machine (a unix socket; a tcp:// or ssh:// engine's disk cannot
    be watched from here). Asked once per client."""
    if id(client) not in _DATA_ROOT:
        from north_lightning.envs.fleet import is_local_engine

        root = client.info().get("DockerRootDir") if is_local_engine(client) else None
        _DATA_ROOT[id(client)] = root if root and os.path.isdir(root) else None
    return _DATA_ROOT[id(client)]


def check_host_disk(client: docker.DockerClient, min_free_mb: int) -> None:
    root = engine_data_root(client)
    if root is None or min_free_mb <= 0:
        return
    stat = os.statvfs(root)
    free_mb = stat.f_bavail * stat.f_frsize / 2**20
    if free_mb < min_free_mb:
        raise HostDiskLow(f"the Docker engine's disk ({root}) has {free_mb:.0f} MB free, under the "
                          f"{min_free_mb} MB floor (min_host_free_mb): no sandbox writes more")
