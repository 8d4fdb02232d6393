"""Start and stop `python -m north_lightning humaneval serve` as a real process (for SIGKILL and browser tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from north_lightning.rl.engines.health import wait_healthy


def start_server(db_path: str | Path, port: int, log_path: str | Path | None = None,
                 timeout: float = 60.0) -> subprocess.Popen:
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "north_lightning", "humaneval", "serve", "--db", str(db_path),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, start_new_session=True)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/healthz", timeout, name="humaneval serve", interval=0.2,
                     log_path=log_path)
    except TimeoutError:
        kill_server(proc)
        raise
    return proc


def kill_server(proc: subprocess.Popen) -> None:
    """SIGKILL: no shutdown hook runs, as when the machine or the process dies."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
