"""Privileges and the host's disk: commands run as a non-root user unless asked (also for Harbor tasks that name
no user and for SWE tasks, whose images make the workdir the agent's), the container keeps only the
capabilities in `KEPT_CAPABILITIES`, and once the engine's disk is under its floor no sandbox starts and running
ones refuse commands (an infrastructure failure, before a writing agent fills the host)."""

from __future__ import annotations

import os

import pytest

from north_lightning.envs.sandbox import KEPT_CAPABILITIES, DockerSandbox, SandboxConfig, SandboxError, docker_client

pytestmark = pytest.mark.docker

# capability numbers from linux/capability.h
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
                   "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
                   "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}


def _caps(status: str, field: str) -> set[str]:
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)), 16)
    unknown = mask & ~sum(1 << bit for bit in CAPABILITY_BITS.values())
    assert not unknown, f"{field} holds capabilities outside the table: {unknown:#x}"
    return {name for name, bit in CAPABILITY_BITS.items() if mask >> bit & 1}


def test_non_root_by_default_and_only_the_needed_capabilities(base_image):
    with DockerSandbox(SandboxConfig(image=base_image)) as box:
        assert box.exec("id -un").output == "agent\n"
        status = box.exec("cat /proc/self/status", user="root").output
        kept = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL"}
        assert set(KEPT_CAPABILITIES) == kept
        assert _caps(status, "CapBnd:") == kept and _caps(status, "CapEff:") == kept
        agent = box.exec("cat /proc/self/status").output
        assert _caps(agent, "CapEff:") == set() and _caps(agent, "CapPrm:") == set()  # the agent holds none
        assert box.exec("mknod /tmp/dev c 1 3", user="root").exit_code != 0
        assert box.exec("setpriv --reuid=1000 id -u", user="root").exit_code != 0  # no SETUID: no user switching
        assert box.exec("chown agent /app && chmod 700 /app && echo ok", user="root").output == "ok\n"
        assert box.exec("echo x > /app/f && chmod 600 /app/f && echo ok").output == "ok\n"
        assert box.exec("cat /app/f && kill -0 1 2>/dev/null; echo $?", user="root").output == "x\n0\n"


_HARBOR_TOML = """[agent]
timeout_sec = 120
[verifier]
timeout_sec = 60
[environment]
memory_mb = 512
{extra}"""


def _harbor_task(tmp_path, name: str, extra: str = ""):
    from north_lightning.envs.tasks import load_harbor_task

    root = tmp_path / name
    (root / "environment").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "instruction.md").write_text("Append a line to /app/data.txt.\n")
    (root / "task.toml").write_text(_HARBOR_TOML.format(extra=extra))
    (root / "environment" / "data.txt").write_text("first\n")
    (root / "environment" / "Dockerfile").write_text("FROM python:3.11-slim-bookworm\nWORKDIR /app\n"
                                                     "COPY data.txt /app/data.txt\n")  # root-owned, as Harbor tasks do
    (root / "tests" / "test.sh").write_text("grep -q first /app/data.txt && echo 1 > /logs/verifier/reward.txt\n")
    return load_harbor_task(root)


def test_a_harbor_task_without_a_user_runs_its_agent_as_non_root(base_image, tmp_path):
    from north_lightning.envs.session import TaskSession

    task = _harbor_task(tmp_path, "no-user")
    assert task.user == "agent"
    with TaskSession(task) as session:
        assert session.box.exec("id -u").output.strip() == "1000"
        # the image made the workdir (and what the Dockerfile copied into it) the agent's
        assert session.box.exec("echo second >> /app/data.txt && touch /app/new && echo ok").output == "ok\n"
        assert session.box.exec("touch /etc/x").exit_code != 0
        assert session.verify().reward == 1.0  # the grader (root) still works in the agent's tree
        # apt as root works without SETUID/SETGID (graders install packages); offline here, so it stops at DNS,
        # not at apt's privilege drop ("Failed to setgroups") as it did before the agent layer configured apt
        apt = session.box.exec("apt-get update 2>&1", user="root", timeout=60).output
        assert "setgroups" not in apt and "Reading package lists" in apt, apt


def test_a_task_that_says_root_gets_root(base_image, tmp_path, bundled_tasks):
    from north_lightning.envs.session import TaskSession

    task = _harbor_task(tmp_path, "root-user", 'user = "root"\n')
    with TaskSession(task) as session:
        assert session.box.exec("id -u").output == "0\n"
    assert next(t for t in bundled_tasks if t.task_id == "json-port").user == "root"


def test_a_swe_task_runs_its_agent_as_non_root_in_an_agent_owned_repo(bundled_tasks):
    from north_lightning.envs.session import TaskSession

    task = next(t for t in bundled_tasks if t.kind == "swe")
    assert task.user == "agent"
    with TaskSession(task) as session:
        box = session.box
        assert box.exec("id -u").output == "1000\n"
        assert box.exec("stat -c %U /testbed && git status --porcelain | wc -l").output == "agent\n0\n"
        assert box.exec("echo '# edit' >> $(git ls-files '*.py' | head -1) && git diff --stat | wc -l").output != "0\n"


def test_a_low_host_disk_is_an_infrastructure_failure(base_image):
    root = docker_client().info()["DockerRootDir"]
    stat = os.statvfs(root)
    floor = int(stat.f_bavail * stat.f_frsize / 2**20) + 10_000  # 10 GB more than is free: "the disk is full"
    with pytest.raises(SandboxError, match="MB floor"):
        DockerSandbox(SandboxConfig(image=base_image, min_host_free_mb=floor)).start()
    with DockerSandbox(SandboxConfig(image=base_image)) as box:
        assert box.exec("echo ok").output == "ok\n"
        box.config.min_host_free_mb = floor  # the disk fills while the episode runs
        with pytest.raises(SandboxError, match="MB floor"):
            box.exec("echo more")


def test_a_registry_image_without_an_agent_account_gets_one_owning_the_repo(base_image, tmp_path):
    """SWE-bench-family images come from a registry with the repository owned by root and no `agent`: the
    sandbox runs them with the agent layer on top (built once per image id)."""
    import io
    import uuid

    from north_lightning.envs.session import task_image
    from north_lightning.envs.tasks import SWETask

    client = docker_client()
    reference = f"nltest-{uuid.uuid4().hex[:8]}/swe-like:1"
    dockerfile = (f"FROM {base_image}\nRUN userdel -r agent && mkdir /testbed && echo x > /testbed/f\n"
                  "WORKDIR /testbed\n").encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=reference, network_mode="none", rm=True)
    task = SWETask(instance_id=f"swe-like-{reference}", repo="x/y", base_commit="0" * 40, patch="", test_patch="",
                   problem_statement="p", fail_to_pass=["t::a"], pass_to_pass=[], image=reference)
    tag = reference
    try:
        tag = task_image(task)
        assert tag != reference
        with DockerSandbox(SandboxConfig(image=tag, workdir="/testbed")) as box:
            assert box.exec("id -un; stat -c %U /testbed/f; echo y >> f && echo ok").output == "agent\nagent\nok\n"
    finally:
        for name in {tag, reference}:
            client.images.remove(name, force=True)
