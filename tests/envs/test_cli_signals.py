"""SIGTERM/SIGINT through the CLI: `tasks verify` starts its sandboxes on worker threads, which cannot install
signal handlers; the CLI installs them on the main thread, so the signal still removes every container."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from north_lightning.envs.docker_host import docker_client, labelled_containers, labelled_summaries, OWNER_PID_LABEL
from north_lightning.envs.tasks import BUNDLED_DIR

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def _slow_tasks(tmp_path: Path, n: int) -> Path:
    """`n` copies of a bundled task whose verifier sleeps for minutes."""
    for i in range(n):
        task = tmp_path / f"slow-{i}"
        shutil.copytree(BUNDLED_DIR / "terminal" / "toy-arith-cbfa16cc", task)
        (task / "tests" / "test.sh").write_text("#!/bin/bash\nsleep 300\n")
    return tmp_path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_tasks_verify_removes_every_container(base_image, tmp_path, signum):
    tasks = _slow_tasks(tmp_path / "tasks", 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "north_lightning", "tasks", "verify", str(tasks), "--jobs", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(labelled_containers(owner_pid=proc.pid)) < 2:  # both workers' verifiers are sleeping
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the two sandboxes did not start within 120 s"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signum)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert labelled_containers(owner_pid=proc.pid) == [], "containers outlived the CLI that owned them"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client = docker_client()
        for leaked in labelled_summaries(client, f"{OWNER_PID_LABEL}={proc.pid}"):
            client.api.remove_container(leaked["Id"], force=True)
