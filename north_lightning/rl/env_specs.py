"""Which tasks an RL run samples: one `EnvSpec` per environment (its task source, the harness the policy talks
through, its share of prompts) and the loader that turns a spec into tasks. Apart from the sampler's threads
(`rl/sampler.py`) because the callbacks check and load specs before any thread starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EnvSpec:
    """One environment of a run: its tasks, the harness the policy talks through, its share of prompts.

    `tasks`: a task directory / SWE .jsonl (see `envs.tasks.load_tasks`), the JSON written by `tasks filter`
    (pass@k band, per-task step budgets), or `toy:<split>:<n>[:<seed>[:<families>]]` for generated toy tasks (families comma-separated,
    default all). `max_steps`: per-task step budget (None: the task's own, e.g. from the pass@k filter).
    """

    name: str
    tasks: str
    harness: str = "terminus2"
    weight: float = 1.0
    max_steps: int | None = None


def load_env_tasks(spec: EnvSpec, work_dir: Path) -> list[Any]:
    from north_lightning.envs.tasks import load_tasks

    if spec.tasks.startswith("toy:"):
        from north_lightning.envs.toy_tasks import FAMILIES, materialize_toy_tasks

        parts = spec.tasks.split(":")
        if len(parts) not in (3, 4, 5):
            raise ValueError(f"env {spec.name!r}: tasks={spec.tasks!r}, expected toy:<split>:<n>[:<seed>[:<families>]] "
                             "(families comma-separated)")
        split, n, seed = parts[1], int(parts[2]), int(parts[3]) if len(parts) >= 4 else 0
        families = tuple(parts[4].split(",")) if len(parts) == 5 else FAMILIES
        root = work_dir / (f"toy_{split}_{n}_{seed}" + ("" if len(parts) < 5 else "_" + "-".join(families)))
        materialize_toy_tasks(root, n, seed=seed, split=split, families=families)
        tasks = load_tasks(root)
    elif spec.tasks.endswith(".json"):
        tasks = _filtered_tasks(Path(spec.tasks))
    else:
        tasks = load_tasks(spec.tasks)
    if not tasks:
        raise ValueError(f"env {spec.name!r}: no tasks found in {spec.tasks!r}")
    return tasks


def _filtered_tasks(report: Path) -> list[Any]:
    """Tasks kept by `tasks filter` (pass@k band), each with its step budget from the successful trajectories."""
    import json

    from north_lightning.envs.tasks import load_tasks

    data = json.loads(report.read_text())
    if not isinstance(data, dict) or "kept" not in data:
        raise ValueError(f"{report}: expected the output of `python -m north_lightning tasks filter` (a 'kept' list)")
    budgets: dict[str, dict[str, int]] = {}
    for i, item in enumerate(data["kept"]):
        if not item.get("path") or "max_steps" not in item:
            raise ValueError(f"{report}: kept[{i}] needs 'path' and 'max_steps', got {sorted(item)}")
        budgets.setdefault(item["path"], {})[item["task_id"]] = int(item["max_steps"])
    tasks = []
    for path, by_id in budgets.items():
        for task in load_tasks(path):
            if task.task_id in by_id:
                task.max_steps = by_id[task.task_id]
                tasks.append(task)
    return tasks
