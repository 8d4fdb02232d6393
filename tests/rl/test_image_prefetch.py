"""The rollout service warms the images of the tasks next in its dispatch order (real `task_image` on the bundled
terminal tasks), without changing that order. Prompts are taken from the dispatcher directly: no engine or episode
is needed to test dispatch (the engine stand-in only reports policy version 0)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from helpers import docker_ok, require

pytestmark = pytest.mark.docker


def _service(tmp_path, tasks, **kwargs):
    from north_lightning.rl.env_specs import EnvSpec
    from north_lightning.rl.sampler import RolloutService
    from north_lightning.rl.spool import RolloutSpool

    return RolloutService(engine=SimpleNamespace(policy_version=0), tokenizer=None,
                          envs=[EnvSpec(name="terminal", tasks="unused")], tasks={"terminal": tasks},
                          spool=RolloutSpool(tmp_path / f"spool{len(kwargs)}"), groups_per_step=1, group_size=2,
                          seed=3, **kwargs)


def test_service_prefetches_the_next_tasks_images_in_dispatch_order(tmp_path):
    require(docker_ok(), "no Docker engine (run `bash scripts/ensure_docker.sh`)")
    from north_lightning.envs.session import image_key, task_image
    from north_lightning.envs.tasks import BUNDLED_DIR, load_tasks

    tasks = load_tasks(BUNDLED_DIR / "terminal")[:6]
    warmed: list[str] = []
    lock = threading.Lock()

    def recording_task_image(task):
        with lock:
            warmed.append(task.task_id)
        return task_image(task)

    plain = _service(tmp_path, tasks)
    service = _service(tmp_path, tasks, image_prefetch=3, prefetch_image=recording_task_image)
    try:
        upcoming = [t.task_id for t in service.upcoming_tasks(5)]
        service._warm_images()  # as `start` does
        dispatched = []
        for _ in range(5):
            service.prefetcher.wait(600)
            with lock:
                seen = list(warmed)
            gid, attempt, prompt = service._next_prompt()
            # the task was warmed before it was dispatched (the window reaches it one dispatch or more ahead)
            assert prompt["task_id"] in seen, (prompt, seen)
            dispatched.append(prompt)
        service.prefetcher.wait(600)
        assert [p["task_id"] for p in dispatched] == upcoming
        # the look-ahead consumes nothing: the same seed without prefetch dispatches the same prompts
        assert [plain._next_prompt()[2] for _ in range(5)] == dispatched
        stats = service.stats()
        assert stats["rl/image_prefetch_failed"] == 0 and stats["rl/images_prefetched"] >= len(set(upcoming))
        for task in tasks:
            if task.task_id in upcoming:
                assert service.prefetcher.results[image_key(task)] == task_image(task)  # the episode's memo hit
        assert len(warmed) == len({image_key(t) for t in tasks if t.task_id in warmed})  # each image once
    finally:
        service.stop(timeout=5)
        plain.stop(timeout=5)
