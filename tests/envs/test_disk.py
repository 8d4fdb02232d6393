"""Every sandbox's writable space is bounded by default (envs/disk.py): the container's whole writable layer sits on
a loop-backed file system of `disk_mb`, so writing past it is ENOSPC inside the container wherever the agent
writes (workdir, /tmp, and as root /, /var, /opt), the host pays at most the bound, the grader can still write
into a full disk, and nothing (mount, loop device, image file) outlives the container, even after a SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from north_lightning.envs.disk import DEFAULT_DISK_MB, DISK_DIR_ENV
from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig, docker_client, sweep_orphans

pytestmark = pytest.mark.docker


def _loop_of(box: DockerSandbox) -> tuple[Path, str]:
    """The container's layer directory and the loop device mounted over it."""
    layer = Path(box.container.attrs["GraphDriver"]["Data"]["UpperDir"]).parent
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(layer)], capture_output=True, text=True).stdout
    return layer, source.strip()


def _loop_gone(loop: str) -> bool:
    backing = Path(f"/sys/block/{Path(loop).name}/loop/backing_file")
    return not backing.exists() or not backing.read_text().strip()


def test_the_default_sandbox_is_bounded(base_image, monkeypatch):
    monkeypatch.delenv("NORTH_SANDBOX_DISK_MB", raising=False)
    assert SandboxConfig(image=base_image).disk_mb == DEFAULT_DISK_MB
    with DockerSandbox(SandboxConfig(image=base_image)) as box:
        size_kb = int(box.exec("df -k --output=size / | tail -1").output)
        assert 0.9 * DEFAULT_DISK_MB * 1024 <= size_kb <= DEFAULT_DISK_MB * 1024  # the container's root is ours


def test_writes_past_the_bound_are_enospc_everywhere_and_the_host_pays_at_most_the_bound(base_image, monkeypatch,
                                                                                         tmp_path):
    monkeypatch.setenv("NORTH_SANDBOX_DISK_MB", "64")  # the operator's default; no per-sandbox opt-in
    monkeypatch.setenv(DISK_DIR_ENV, str(tmp_path))
    with DockerSandbox(SandboxConfig(image=base_image, workdir="/app")) as box:
        layer, loop = _loop_of(box)
        assert loop.startswith("/dev/loop")
        assert int(Path(f"/sys/block/{Path(loop).name}/size").read_text()) * 512 == 64 * 2**20  # the host's most
        code, out = box.exec("dd if=/dev/zero of=/app/fill bs=1M count=200")  # the agent, in its workdir
        assert code != 0 and "No space left on device" in out
        assert "No space left on device" in box.exec("dd if=/dev/zero of=/tmp/fill bs=1M count=8").output
        for path in ("/fill", "/var/fill", "/opt/fill"):  # a root agent outside the workdir: bounded too
            code, out = box.exec(f"fallocate -l 100M {path} || dd if=/dev/zero of={path} bs=1M count=100",
                                 user="root")
            assert code != 0 and "No space left on device" in out, (path, out)
        used = os.statvfs(layer)
        assert used.f_blocks * used.f_frsize <= 64 * 2**20
        assert box.exec("rm -f /app/fill /tmp/fill; echo ok > /app/small && cat /app/small").output == "ok\n"
    assert not layer.exists() and _loop_gone(loop)  # removed with the container
    assert not list(tmp_path.iterdir())  # the image file never had a name


def test_zero_turns_the_bound_off_only_when_asked(base_image, monkeypatch):
    monkeypatch.setenv("NORTH_SANDBOX_DISK_MB", "0")
    with DockerSandbox(SandboxConfig(image=base_image)) as box:
        assert box._disk is None and not os.path.ismount(_loop_of(box)[0])
    monkeypatch.setenv("NORTH_SANDBOX_DISK_MB", "lots")
    with pytest.raises(ValueError, match="NORTH_SANDBOX_DISK_MB='lots'"):
        SandboxConfig(image=base_image)


def test_the_grader_still_runs_after_the_agent_filled_its_disk(bundled_tasks):
    from north_lightning.envs.session import TaskSession

    task = next(t for t in bundled_tasks if t.task_id.startswith("toy-write-file"))
    with TaskSession(task, disk_mb=32) as session:
        out = session.box.exec("dd if=/dev/zero of=/app/fill bs=1M count=100").output
        assert "No space left on device" in out
        result = session.verify()
    assert result.reason == "tests_failed" and result.reward == 0.0, result  # graded, not a sandbox_error


_CHILD = """
import sys, time
from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig
box = DockerSandbox(SandboxConfig(image=sys.argv[1], disk_mb=32)).start()
print(box.container.id, flush=True)
time.sleep(120)
"""


def test_a_killed_owners_disk_goes_with_the_container_sweep(base_image):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, base_image], stdout=subprocess.PIPE, text=True)
    cid = child.stdout.readline().strip()
    child.kill()  # SIGKILL: no hook runs
    child.wait(timeout=30)
    container = docker_client().containers.get(cid)
    layer = Path(container.attrs["GraphDriver"]["Data"]["UpperDir"]).parent
    loop = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(layer)], capture_output=True, text=True).stdout.strip()
    assert loop.startswith("/dev/loop")
    name = container.name
    assert name in sweep_orphans()
    assert not layer.exists() and _loop_gone(loop)
