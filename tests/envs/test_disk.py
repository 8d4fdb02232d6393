"""A sandbox's work directory bounded by a loop-backed volume: writing past it is ENOSPC inside the container,
the host pays at most the bound, the image's workdir content is there, and closing removes volume, loop device
and image file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import require
from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig, docker_client

pytestmark = pytest.mark.docker


def test_writes_past_the_bound_are_enospc_and_nothing_is_left(base_image, tmp_path, monkeypatch):
    require(os.geteuid() == 0 and shutil.which("losetup") is not None and shutil.which("debugfs") is not None,
            "loop-backed work volumes need root, losetup and debugfs")
    monkeypatch.setenv("NORTH_SANDBOX_DISK_DIR", str(tmp_path))
    with DockerSandbox(SandboxConfig(image=base_image, disk_mb=64, workdir="/app")) as box:
        image = next(tmp_path.glob("*.img"))
        volume = box._disk.name
        code, out = box.exec("dd if=/dev/zero of=/app/fill bs=1M count=200")
        assert code != 0 and "No space left on device" in out
        assert box.exec("fallocate -l 100M /app/more").exit_code != 0
        assert box.exec("rm /app/fill /app/more; echo ok > /app/small && cat /app/small").output == "ok\n"
        assert image.stat().st_blocks * 512 <= 64 * 2**20  # what the host paid
        assert "/app" in box.exec("df /app").output and box.exec("id -un").output == "agent\n"
    assert not image.exists()
    assert not docker_client().volumes.list(filters={"name": volume})
    assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


_CHILD = """
import sys, time
from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig
box = DockerSandbox(SandboxConfig(image=sys.argv[1], disk_mb=32)).start()
print(box.container.id, box._disk.name, flush=True)
time.sleep(120)
"""


def test_the_sweep_removes_a_killed_owners_disk(base_image, tmp_path):
    require(os.geteuid() == 0 and shutil.which("losetup") is not None and shutil.which("debugfs") is not None,
            "loop-backed work volumes need root, losetup and debugfs")
    from north_lightning.envs.disk import sweep_orphan_disks

    env = {**os.environ, "NORTH_SANDBOX_DISK_DIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, base_image], stdout=subprocess.PIPE, text=True, env=env)
    cid, volume = child.stdout.readline().split()
    child.kill()  # SIGKILL: no hook runs
    child.wait(timeout=30)
    image = next(tmp_path.glob("*.img"))
    assert docker_client().volumes.list(filters={"name": volume})
    docker_client().api.remove_container(cid, force=True)  # the container sweep's part (tests/envs/test_sweep.py)
    assert volume in sweep_orphan_disks(docker_client())
    assert not image.exists() and not docker_client().volumes.list(filters={"name": volume})
    assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
