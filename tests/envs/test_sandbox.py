"""DockerSandbox: exec, timeouts, output limits, files, limits, budgets and guaranteed removal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from north_lightning.envs.sandbox import (
    OWNER_PID_LABEL,
    SANDBOX_LABEL,
    DockerSandbox,
    EpisodeTimeout,
    SandboxConfig,
    SandboxError,
    docker_client,
    sweep_orphans,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def box(base_image):
    with DockerSandbox(SandboxConfig(image=base_image, user="agent", memory_mb=256, command_timeout_sec=20)) as sandbox:
        yield sandbox


def _exists(container_id: str) -> bool:
    return bool(docker_client().api.containers(all=True, filters={"id": container_id}))


def test_exec_returns_exit_code_and_merged_output(box):
    assert box.exec("echo out; echo err >&2; exit 3") == (3, "out\nerr\n")
    assert box.exec(["python3", "-c", "print(2 + 3)"]) == (0, "5\n")
    assert box.exec("id -un; pwd").output == "agent\n/app\n"
    assert box.exec("id -un", user="root").output == "root\n"


def test_command_timeout_kills_the_command_and_its_children(box):
    started = time.monotonic()
    code, out = box.exec("sleep 300 & sleep 300", timeout=1.5)
    assert code == 124 and "timed out" in out
    assert time.monotonic() - started < 6
    assert "sleep 300" not in box.exec("ps -eo args").output  # nothing of the command outlives it


def test_output_is_truncated_keeping_head_and_tail(box):
    code, out = box.exec("seq 1 200000", max_output_bytes=2000)
    assert code == 0 and out.startswith("1\n2\n") and out.rstrip().endswith("200000")
    assert "bytes of output omitted" in out and len(out) < 2200


def test_files_in_and_out(box):
    box.put_files({"/app/sub/a.txt": "alpha\n", "/tmp/b.bin": b"\x00\x01"}, owner=1000)
    assert box.get_file("/app/sub/a.txt") == b"alpha\n"
    assert box.get_file("/tmp/b.bin") == b"\x00\x01"
    assert box.exec("stat -c %U /app/sub/a.txt").output == "agent\n"
    with pytest.raises(FileNotFoundError):
        box.get_file("/nope")


def test_put_dir_keeps_modes(box, tmp_path):
    (tmp_path / "run.sh").write_text("#!/bin/bash\necho ran\n")
    (tmp_path / "run.sh").chmod(0o755)
    box.put_dir(tmp_path, "/opt/scripts")
    assert box.exec("/opt/scripts/run.sh") == (0, "ran\n")


def test_episode_budget(base_image):
    with DockerSandbox(SandboxConfig(image=base_image, episode_timeout_sec=2.0)) as box:
        code, _ = box.exec("sleep 10", timeout=30)
        assert code == 124  # capped by the remaining budget, not the 30 s asked for
        with pytest.raises(EpisodeTimeout):
            box.exec("true")


def test_close_is_idempotent_and_removes_the_container(base_image):
    box = DockerSandbox(SandboxConfig(image=base_image)).start()
    cid = box.container.id
    box.close()
    box.close()
    assert not _exists(cid)
    with pytest.raises(SandboxError):
        box.exec("true")


def test_context_manager_removes_on_exception(base_image):
    with pytest.raises(RuntimeError):
        with DockerSandbox(SandboxConfig(image=base_image)) as box:
            cid = box.container.id
            raise RuntimeError("boom")
    assert not _exists(cid)


def test_missing_image_is_a_clear_error():
    with pytest.raises(SandboxError, match="not found"):
        DockerSandbox(SandboxConfig(image="north-lightning/does-not-exist:0")).start()


_CHILD = textwrap.dedent("""
    import sys, time
    from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig
    box = DockerSandbox(SandboxConfig(image=sys.argv[1])).start()
    print(box.container.id, flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_parent_signal_removes_its_containers(base_image, signum):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, base_image], stdout=subprocess.PIPE, text=True)
    cid = child.stdout.readline().strip()
    assert cid and _exists(cid)
    child.send_signal(signum)
    child.wait(timeout=30)
    assert child.returncode != 0
    assert not _exists(cid)


def test_orphan_sweep_removes_containers_of_dead_owners(base_image):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, base_image], stdout=subprocess.PIPE, text=True)
    cid = child.stdout.readline().strip()
    child.kill()  # SIGKILL: no hook can run
    child.wait(timeout=30)
    assert _exists(cid)
    with DockerSandbox(SandboxConfig(image=base_image)) as mine:  # a live owner's container is kept
        sweep_orphans()
        assert not _exists(cid)
        assert _exists(mine.container.id)
        labels = mine.container.labels
        assert labels[SANDBOX_LABEL] == "1" and labels[OWNER_PID_LABEL] == str(os.getpid())
