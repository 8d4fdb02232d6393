"""Privileges and the host's disk: commands run as a non-root user unless asked, the container keeps only the
capabilities in `KEPT_CAPABILITIES`, and once the engine's disk is under its floor no sandbox starts and running
ones refuse commands (an infrastructure failure, before a writing agent fills the host)."""

from __future__ import annotations

import os

import pytest

from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig, SandboxError, docker_client

pytestmark = pytest.mark.docker

# capability numbers from linux/capability.h
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
                   "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
                   "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}


def _caps(status: str, field: str) -> set[str]:
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)), 16)
    unknown = mask & ~sum(1 << bit for bit in CAPABILITY_BITS.values())
    assert not unknown, f"{field} holds capabilities outside the table: {unknown:#x}"
    return {name for name, bit in CAPABILITY_BITS.items() if mask >> bit & 1}


def test_non_root_by_default_and_only_the_needed_capabilities(base_image):
    with DockerSandbox(SandboxConfig(image=base_image)) as box:
        assert box.exec("id -un").output == "agent\n"
        status = box.exec("cat /proc/self/status", user="root").output
        kept = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"}
        assert _caps(status, "CapBnd:") == kept and _caps(status, "CapEff:") == kept
        assert box.exec("mknod /tmp/dev c 1 3", user="root").exit_code != 0
        assert box.exec("chown agent /app && chmod 700 /app && echo ok", user="root").output == "ok\n"


def test_a_low_host_disk_is_an_infrastructure_failure(base_image):
    root = docker_client().info()["DockerRootDir"]
    stat = os.statvfs(root)
    floor = int(stat.f_bavail * stat.f_frsize / 2**20) + 10_000  # 10 GB more than is free: "the disk is full"
    with pytest.raises(SandboxError, match="MB floor"):
        DockerSandbox(SandboxConfig(image=base_image, min_host_free_mb=floor)).start()
    with DockerSandbox(SandboxConfig(image=base_image)) as box:
        assert box.exec("echo ok").output == "ok\n"
        box.config.min_host_free_mb = floor  # the disk fills while the episode runs
        with pytest.raises(SandboxError, match="MB floor"):
            box.exec("echo more")
