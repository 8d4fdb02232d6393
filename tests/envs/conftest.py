"""Docker-environment fixtures: one base image build per session, task images built once, and a session
finaliser asserting that no sandbox container created by this test process is left behind."""

from __future__ import annotations

import os

import pytest

from helpers import docker_ok, require


@pytest.fixture(scope="session")
def docker_ready() -> bool:
    require(docker_ok(), "no Docker engine (run `bash scripts/ensure_docker.sh`)")
    return True


@pytest.fixture(scope="session")
def base_image(docker_ready: bool) -> str:
    from north_lightning.envs.images import build_base_image

    return build_base_image()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from north_lightning.assets import tiny_tokenizer_path

    return AutoTokenizer.from_pretrained(tiny_tokenizer_path())


@pytest.fixture(scope="session")
def bundled_tasks(base_image: str):
    from north_lightning.envs.session import task_image
    from north_lightning.envs.tasks import BUNDLED_DIR, load_tasks

    tasks = load_tasks(BUNDLED_DIR)
    for task in tasks:  # build every task image once, up front
        task_image(task)
    return tasks


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers():
    """After the whole session: no sandbox container may remain, neither one of this process nor one whose
    owner died. Containers of processes killed with SIGKILL (which no hook survives) are removed by the
    orphan sweep first, as a rollout service does at start; anything left after that is a leak."""
    yield
    if not docker_ok():
        return
    from north_lightning.envs.sandbox import labelled_containers, sweep_orphans, wait_for_removals

    wait_for_removals()  # episodes hand their containers to background removal
    swept = sweep_orphans()
    if swept:
        print(f"\norphan sweep removed {len(swept)} container(s) of killed processes: {swept}")
    leaked = labelled_containers(owner_pid=os.getpid())
    assert not leaked, f"sandbox containers left behind by the test session: {leaked}"
    assert not sweep_orphans(), "orphaned sandbox containers remain after the sweep"
