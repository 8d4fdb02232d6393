"""Waiting for a server we just started to answer its health route: `vllm serve` (`launch.py`), and in the tests
`humaneval serve` and a local `docker-registry`.

One loop so the rules are the same everywhere: a process that exits during its start is an error at once (not a
wait until the deadline), a route that does not answer yet is asked again after `interval`, and only a 200 counts.
What to do with a process that never became healthy (SIGTERM its group, SIGKILL it) is the caller's: it catches
the `TimeoutError`.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, *, name: str, interval: float = 1.0,
                 log_path: str | Path | None = None) -> None:
    """Return once GET `url` answers 200. Raise `RuntimeError` if `proc` exits first, `TimeoutError` after
    `timeout` seconds; both name `name` and `log_path` (where the process's output went)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} during start (log: {log_path})")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{name} did not become healthy at {url} within {timeout:.0f} s (log: {log_path})")
