"""A bound on everything a sandbox can write: its container's whole writable layer lives on a loop-backed ext4
file system of `size_mb`.

Why this way: Docker's overlay2 on ext4 has no per-container size option, a tmpfs counts against the
container's memory limit, and a read-only root breaks the many third-party tasks (and graders) that write
outside their work directory. Overlay2 keeps a container's writable layer (`GraphDriver.Data.UpperDir`, with its
`WorkDir` beside it) in one directory per container, which the engine mounts as the overlay's upper layer when
the container starts. Between create and start we mount a fresh ext4 file system over that directory (holding a
copy of what the engine put there), so every write anywhere in the container — workdir, `/`, `/var`, `/opt`,
`/tmp`, home — lands on it: past `size_mb` it is ENOSPC inside the container, and the host pays at most
`size_mb`. Overlayfs writes to its upper layer with the mounter's (root's) credentials, so ext4's root-only
reserved blocks would not hold anything back from the agent; instead a `GRADER_RESERVE` file outside the
container's view holds 1/8 of the bound (at most 64 MB, allocated but never written: the host does not pay for it)
until `release_reserve()`, which the grader calls before copying its tests in, so an agent that filled its disk
is graded (and scored 0 by its tests) rather than ending the episode as an infrastructure failure.

Cost: the image is a sparse O_TMPFILE file (it never has a name, so nothing is left on disk even after a SIGKILL),
formatted without a journal and with lazy inode tables that are never zeroed (`noinit_itable`): tens of
milliseconds per sandbox (20-80 ms on a loaded 2-core machine, within the noise of a container start) and about
2 MB of host disk for a 4 GB bound (`bench/sandbox_disk.py`).
Removal is the engine's: removing the container deletes its layer directory, unmounting our file system on the
way (`EnsureRemoveAll`), and the loop device, set to autoclear by `mount -o loop`, goes with the last unmount.

Needs root on the engine's host (mount, loop devices, `mkfs.ext4` from e2fsprogs >= 1.43 for `-d`), the overlay2
storage driver, and the engine's data root visible here (an engine on this machine, also when reached over
tcp://). Off only when asked: `disk_mb=0` for a sandbox or a task, or `NORTH_SANDBOX_DISK_MB=0` for a run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from north_lightning.envs.docker_host import SandboxError

DEFAULT_DISK_MB = 4096
DISK_MB_ENV = "NORTH_SANDBOX_DISK_MB"
DISK_DIR_ENV = "NORTH_SANDBOX_DISK_DIR"  # where the (nameless) image files live: a disk of the engine's host
DEFAULT_DISK_DIR = "/var/tmp/north_lightning/disks"
_MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")
_MOUNT_OPTIONS = "loop,nosuid,nodev,noinit_itable"
GRADER_RESERVE = "north_grader_reserve"  # beside the layer's diff/ and work/, outside the container's view


def default_disk_mb() -> int:
    """`$NORTH_SANDBOX_DISK_MB` when set (0 turns the bound off), else `DEFAULT_DISK_MB`."""
    text = os.environ.get(DISK_MB_ENV, "").strip()
    if not text:
        return DEFAULT_DISK_MB
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{DISK_MB_ENV}={text!r}: expected a whole number of MB (0 = no disk bound)") from None
    if value < 0:
        raise ValueError(f"{DISK_MB_ENV}={text!r}: must be >= 0 (0 = no disk bound)")
    return value


def _run(*argv: str, pass_fds: tuple[int, ...] = ()) -> str:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60,
                              pass_fds=pass_fds).stdout.strip()
    except FileNotFoundError as err:
        raise SandboxError(f"the sandbox disk bound needs `{argv[0]}` on this host (e2fsprogs / util-linux); "
                           f"{DISK_MB_ENV}=0 runs without it") from err
    except subprocess.CalledProcessError as err:
        raise SandboxError(f"`{' '.join(argv)}` failed: {err.stderr.strip()}") from err


class LayerDisk:
    """The bounded writable layer of one container: `attach(attrs)` after create and before start, `check()`
    after start."""

    def __init__(self, size_mb: int, name: str = "sandbox") -> None:
        if size_mb < 8:
            raise SandboxError(f"disk_mb={size_mb}: the smallest bound is 8 MB (0 turns it off)")
        if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
            raise SandboxError(f"the sandbox disk bound ({size_mb} MB) needs root and mkfs.ext4 on the Docker "
                               f"engine's host; set {DISK_MB_ENV}=0 (or disk_mb=0) to run without it")
        self.size_mb, self.name = size_mb, name
        self.layer: Path | None = None

    def attach(self, attrs: dict[str, Any]) -> None:
        """Mount a fresh file system of `size_mb` over the created container's layer directory."""
        graph = attrs.get("GraphDriver") or {}
        upper = (graph.get("Data") or {}).get("UpperDir")
        if graph.get("Name") != "overlay2" or not upper:
            raise SandboxError(f"the sandbox disk bound needs Docker's overlay2 storage driver, not "
                               f"{graph.get('Name')!r}; set {DISK_MB_ENV}=0 to run without it")
        layer = Path(upper).parent
        if not Path(upper).is_dir():
            raise SandboxError(f"the sandbox disk bound needs the engine's data root on this machine ({upper} is "
                               f"not here: a remote engine?); set {DISK_MB_ENV}=0 to run without it")
        disk_dir = Path(os.environ.get(DISK_DIR_ENV, DEFAULT_DISK_DIR))
        disk_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(disk_dir, os.O_TMPFILE | os.O_RDWR, 0o600)  # no name: nothing to leak, whatever kills us
        try:
            os.ftruncate(fd, self.size_mb * 2**20)  # sparse: the host pays only for what is written
            image = f"/proc/{os.getpid()}/fd/{fd}"
            _run("mkfs.ext4", *_MKFS_OPTIONS, "-d", str(layer), image, pass_fds=(fd,))  # the layer's files copied in
            _run("mount", "-o", _MOUNT_OPTIONS, image, str(layer), pass_fds=(fd,))
        finally:
            os.close(fd)  # the loop device holds the file from here on
        self.layer = layer
        reserve = os.open(layer / GRADER_RESERVE, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(reserve, 0, min(64, self.size_mb // 8) * 2**20)
        finally:
            os.close(reserve)

    def release_reserve(self) -> None:
        """Give the grader's share back to the file system (before the grader writes); idempotent."""
        if self.layer is not None:
            (self.layer / GRADER_RESERVE).unlink(missing_ok=True)

    def check(self, attrs: dict[str, Any]) -> None:
        """After start: the container's root is the overlay whose upper layer is our file system (not the case
        when the engine runs in another mount namespace, which never saw our mount)."""
        merged = (attrs.get("GraphDriver", {}).get("Data") or {}).get("MergedDir")
        if self.layer is None or not merged:
            return
        stat = os.statvfs(merged)
        size_mb = stat.f_blocks * stat.f_frsize / 2**20
        if os.stat(merged).st_dev == os.stat(self.layer).st_dev or not 0.8 * self.size_mb <= size_mb <= self.size_mb:
            raise SandboxError(f"{self.name}: the disk bound did not take ({merged} reports {size_mb:.0f} MB, "
                               f"expected {self.size_mb}): does the engine share this machine's mounts? "
                               f"{DISK_MB_ENV}=0 runs without the bound")

    def detach(self) -> None:
        """Unmount when the engine did not (a container that could not be created or removed); idempotent."""
        if self.layer is not None and os.path.ismount(self.layer):
            subprocess.run(["umount", "-l", str(self.layer)], capture_output=True, timeout=60)
        self.layer = None
