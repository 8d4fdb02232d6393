"""Every bundled task: oracle reward 1.0, untouched environment 0.0 (via the CLI, as CI and users run it)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from north_lightning.cli.tasks import main as tasks_main
from north_lightning.envs.session import verify_task

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _check(task) -> None:
    solved = verify_task(task, oracle=True)
    assert solved.reward == 1.0 and solved.reason == "passed", (task.task_id, solved.reason, solved.output)
    assert solved.tests and all(v == "passed" for v in solved.tests.values()), solved.tests
    untouched = verify_task(task, oracle=False)
    assert untouched.reward == 0.0 and untouched.reason == "tests_failed", (task.task_id, untouched.reason)
    if task.kind == "swe":  # the proof of the fix fails, the rest of the suite still passes
        assert all(untouched.tests[t] == "failed" for t in task.fail_to_pass)
        assert all(untouched.tests[t] == "passed" for t in task.pass_to_pass)


def test_oracle_solves_every_bundled_task_and_untouched_fails(bundled_tasks):
    with ThreadPoolExecutor(4) as pool:  # containers overlap; each task still runs in its own sandboxes
        list(pool.map(_check, bundled_tasks))


def test_cli_verify_prints_reward_last_and_exits_zero_on_reward_zero(bundled_tasks, capsys):
    task_dir = next(t.path for t in bundled_tasks if t.task_id == "csv-revenue")
    assert tasks_main(["verify", str(task_dir), "--oracle", "--jobs", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "reward=1"
    assert tasks_main(["verify", str(task_dir)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "reward=0"


def test_cli_verify_errors_exit_nonzero(tmp_path, capsys):
    (tmp_path / "task.toml").write_text("[agent]\n")
    assert tasks_main(["verify", str(tmp_path)]) == 1
    assert "instruction.md: missing" in capsys.readouterr().err
