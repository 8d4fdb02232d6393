"""The disk bound's cost per sandbox (envs/disk.py): start and removal of a sandbox with the default bound
against the same without it, interleaved in one process so both see the same machine load (medians: a loaded
machine's outliers move means, not medians).

Also times the bound's own steps (sparse O_TMPFILE + mkfs.ext4 without journal and lazy inode tables + loop mount)
on a scratch directory, and reports what the host pays for an empty bound of the default size.

Last line: `start_ms_bounded=... start_ms_unbounded=... start_overhead_ms=... close_overhead_ms=...
start_overhead_pct=... disk_setup_ms=... host_mb_per_empty_disk=...` (medians).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

from north_lightning.envs.disk import _MKFS_OPTIONS, _MOUNT_OPTIONS, DEFAULT_DISK_MB
from north_lightning.envs.images import build_base_image
from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig


def _cycle(image: str, disk_mb: int) -> tuple[float, float]:
    """Seconds to start a sandbox (to its first command's answer) and to remove it."""
    started = time.monotonic()
    box = DockerSandbox(SandboxConfig(image=image, disk_mb=disk_mb)).start()
    box.exec("true")
    ready = time.monotonic()
    box.close()
    return ready - started, time.monotonic() - ready


def _disk_setup(size_mb: int) -> tuple[float, float]:
    """Seconds to make and mount one bound, and the MB the host pays for it while empty."""
    with tempfile.TemporaryDirectory(prefix="north_disk_bench_") as tmp:
        layer = os.path.join(tmp, "layer")
        os.makedirs(os.path.join(layer, "diff"))
        started = time.monotonic()
        fd = os.open(tmp, os.O_TMPFILE | os.O_RDWR, 0o600)
        os.ftruncate(fd, size_mb * 2**20)
        path = f"/proc/{os.getpid()}/fd/{fd}"
        subprocess.run(["mkfs.ext4", *_MKFS_OPTIONS, "-d", layer, path], check=True, pass_fds=(fd,))
        subprocess.run(["mount", "-o", _MOUNT_OPTIONS, path, layer], check=True, pass_fds=(fd,))
        seconds = time.monotonic() - started
        paid_mb = os.fstat(fd).st_blocks * 512 / 2**20
        os.close(fd)
        subprocess.run(["umount", layer], check=True)
    return seconds, paid_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    image = build_base_image()
    _cycle(image, DEFAULT_DISK_MB)  # warm the engine and the page cache
    bounded, unbounded = [], []
    for _ in range(args.rounds):
        bounded.append(_cycle(image, DEFAULT_DISK_MB))
        unbounded.append(_cycle(image, 0))
    setups = [_disk_setup(DEFAULT_DISK_MB) for _ in range(args.rounds)]
    def median_ms(runs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(run[i] for run in runs) * 1e3

    with_ms, without_ms = median_ms(bounded, 0), median_ms(unbounded, 0)
    print(f"start_ms_bounded={with_ms:.0f} start_ms_unbounded={without_ms:.0f} "
          f"start_overhead_ms={with_ms - without_ms:.0f} "
          f"close_overhead_ms={median_ms(bounded, 1) - median_ms(unbounded, 1):.0f} "
          f"start_overhead_pct={100 * (with_ms / without_ms - 1):.1f} "
          f"disk_setup_ms={statistics.median(s for s, _ in setups) * 1e3:.0f} "
          f"host_mb_per_empty_disk={statistics.median(p for _, p in setups):.1f}")


if __name__ == "__main__":
    main()
