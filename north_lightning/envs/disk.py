"""A size-limited work directory for a sandbox: a loop-backed ext4 volume mounted at the task's workdir.

Why a loop device: Docker's overlay2 on ext4 has no per-container size option, and a tmpfs counts against the
container's memory limit. A sparse file of `size_mb`, formatted ext4 and attached to a loop device, is handed to
Docker's `local` volume driver (`type=ext4,device=/dev/loopN`); an agent writing past it gets ENOSPC inside the
container while the host loses at most `size_mb`. The volume starts empty (the image's `lost+found` removed with
`debugfs`), so Docker copies the image's workdir into it on first mount. Needs root on the engine's host (loop
devices, `mkfs.ext4`, `losetup`) and an engine on this machine; `SandboxConfig.disk_mb` opts in.

Everything made here carries the sandbox's owner labels, so `sweep_orphan_disks` removes what a SIGKILLed
process left (volume, loop device, image file) exactly as the container sweep does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import docker
import docker.errors

from north_lightning.envs.docker_host import (OWNER_PID_LABEL, OWNER_START_LABEL, SandboxError, is_ours,
                                              owner_alive)

DISK_LABEL = "north_lightning.disk"
IMAGE_PATH_LABEL = "north_lightning.disk_image"
DISK_DIR_ENV = "NORTH_SANDBOX_DISK_DIR"
DEFAULT_DISK_DIR = "/var/tmp/north_lightning/disks"


def _run(*argv: str) -> str:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except FileNotFoundError as err:
        raise SandboxError(f"disk_mb needs `{argv[0]}` on this host (e2fsprogs / util-linux)") from err
    except subprocess.CalledProcessError as err:
        raise SandboxError(f"`{' '.join(argv)}` failed: {err.stderr.strip()}") from err


class WorkVolume:
    """The loop-backed volume of one sandbox: `create()` before the container, `remove()` after it."""

    def __init__(self, client: docker.DockerClient, box_id: str, size_mb: int, labels: dict[str, str]) -> None:
        if os.geteuid() != 0 or shutil.which("losetup") is None:
            raise SandboxError("disk_mb needs root and losetup on the Docker engine's host")
        self.client, self.size_mb = client, size_mb
        self.name = f"north_disk_{box_id}"
        self.image = Path(os.environ.get(DISK_DIR_ENV, DEFAULT_DISK_DIR)) / f"{box_id}.img"
        self.labels = {**labels, DISK_LABEL: "1", IMAGE_PATH_LABEL: str(self.image)}
        self.loop: str | None = None

    def create(self) -> str:
        try:
            self.image.parent.mkdir(parents=True, exist_ok=True)
            with self.image.open("wb") as fh:
                fh.truncate(self.size_mb * 2**20)  # sparse: the host pays only for what is written
            _run("mkfs.ext4", "-q", "-F", str(self.image))
            _run("debugfs", "-w", "-R", "rmdir lost+found", str(self.image))  # empty: Docker copies the workdir in
            self.loop = _run("losetup", "--find", "--show", str(self.image))
            self.client.volumes.create(name=self.name, driver="local", labels=self.labels,
                                       driver_opts={"type": "ext4", "device": self.loop})
        except BaseException:
            self.remove()
            raise
        return self.name

    def remove(self) -> None:
        """Idempotent; the container using the volume must be gone first."""
        remove_disk(self.client, self.name, str(self.image))


def remove_disk(client: docker.DockerClient, volume: str, image: str) -> None:
    try:
        client.volumes.get(volume).remove(force=True)
    except docker.errors.NotFound:
        pass
    if not image:
        return
    attached = subprocess.run(["losetup", "-j", image], capture_output=True, text=True).stdout
    for line in attached.splitlines():  # "/dev/loop3: []: (/path/img)"
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)
    Path(image).unlink(missing_ok=True)


def sweep_orphan_disks(client: docker.DockerClient, *, all_owners: bool = False) -> list[str]:
    """Remove this host's and user's work volumes whose owner is gone (with their loop devices and files)."""
    removed = []
    for volume in client.volumes.list(filters={"label": DISK_LABEL}):
        labels: dict[str, Any] = volume.attrs.get("Labels") or {}
        if not is_ours(labels):
            continue
        try:
            alive = owner_alive(int(labels.get(OWNER_PID_LABEL, "")), labels.get(OWNER_START_LABEL))
        except ValueError:
            alive = False
        if all_owners or not alive:
            try:
                remove_disk(client, volume.name, labels.get(IMAGE_PATH_LABEL, ""))
            except docker.errors.APIError:
                continue  # still in use by a container the sweep did not remove
            removed.append(volume.name)
    return removed
