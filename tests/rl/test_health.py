"""`wait_healthy` against real processes: a stdlib HTTP server that comes up, one that exits during its start, one
that never answers (the vLLM, humaneval and registry starts all go through it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import free_port
from north_lightning.rl.engines.health import wait_healthy


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_returns_once_the_route_answers(tmp_path):
    port = free_port()
    proc = _start("-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path))
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/", 60, name="http.server", interval=0.1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_exits_during_start_is_an_error_at_once(tmp_path):
    proc = _start("-c", "import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"^toy exited with code 3 during start \(log: .*toy.log\)"):
        wait_healthy(proc, f"http://127.0.0.1:{free_port()}/", 60, name="toy", interval=0.1,
                     log_path=tmp_path / "toy.log")


def test_a_route_that_never_answers_times_out_and_leaves_the_process_to_the_caller():
    proc = _start("-c", "import time; time.sleep(60)")
    url = f"http://127.0.0.1:{free_port()}/health"  # nothing listens there
    try:
        with pytest.raises(TimeoutError, match=rf"slow did not become healthy at {url} within 1 s"):
            wait_healthy(proc, url, 1, name="slow", interval=0.1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
