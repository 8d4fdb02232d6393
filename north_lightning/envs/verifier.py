"""Unit-test verification: a binary reward plus a structured result (per-test outcome, timing, reason).

Harbor tasks run their own `tests/test.sh`, which writes the reward to /logs/verifier/reward.txt (a number)
or reward.json (`{"reward": x}`); SWE tasks get their `test_patch` applied (test files first reset to the base
commit, as SWE-bench does) and are resolved iff every FAIL_TO_PASS test passes and every PASS_TO_PASS test
still passes. Per-test outcomes are read from pytest's `-rA` summary lines wherever the tests print them.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from north_lightning.envs.sandbox import DockerSandbox, SandboxError
from north_lightning.envs.tasks import HarborTask, SWETask, Task

TESTS_DIR = "/tests"
REWARD_DIR = "/logs/verifier"
_PYTEST_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED)\s+(\S+?)(?:\s+-\s+.*)?$", re.MULTILINE)
_OUTCOME = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "XFAIL": "xfailed", "XPASS": "xpassed",
            "SKIPPED": "skipped"}


@dataclass
class VerifierResult:
    """`reward` is 1.0 or 0.0 for our tasks (Harbor tasks may write any number; `passed` means >= 1)."""

    reward: float
    reason: str  # passed | tests_failed | no_reward_file | bad_reward_file | verifier_timeout | patch_failed | ...
    tests: dict[str, str] = field(default_factory=dict)  # test id -> passed / failed / error / missing / ...
    duration_s: float = 0.0
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.reward >= 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def parse_pytest_outcomes(output: str) -> dict[str, str]:
    """Test id -> outcome from `pytest -rA` short-summary lines (the last outcome of an id wins)."""
    return {test: _OUTCOME[word] for word, test in _PYTEST_LINE.findall(output)}


def verify(box: DockerSandbox, task: Task) -> VerifierResult:
    """Run the task's tests in the episode's sandbox (after the agent is done) and score them."""
    started = time.monotonic()
    try:
        result = verify_swe(box, task) if isinstance(task, SWETask) else verify_harbor(box, task)
    except SandboxError as err:
        result = VerifierResult(0.0, "sandbox_error", output=str(err))
    result.duration_s = time.monotonic() - started
    return result


def _run_root(box: DockerSandbox, cmd: str, timeout: float, workdir: str) -> tuple[int, str]:
    # The verifier may need more time than the agent left on the episode clock: it has its own timeout.
    return box.exec(cmd, timeout=timeout, user="root", workdir=workdir, max_output_bytes=200_000,
                    outside_episode_budget=True)


def verify_harbor(box: DockerSandbox, task: HarborTask) -> VerifierResult:
    # Fresh tests and no stale reward: an agent running as root could have planted either. The disk bound's
    # reserve is freed first, so an agent that filled its disk is still graded (and fails its tests).
    box.release_disk_reserve()
    _run_root(box, f"rm -rf {TESTS_DIR} {REWARD_DIR}/reward.txt {REWARD_DIR}/reward.json; mkdir -p {REWARD_DIR}",
              60, "/")
    box.put_dir(task.tests_dir, TESTS_DIR)
    code, output = _run_root(box, f"bash {TESTS_DIR}/test.sh", task.verifier_timeout_sec, task.workdir)
    tests = parse_pytest_outcomes(output)
    if code == 124:
        return VerifierResult(0.0, "verifier_timeout", tests, output=output[-4000:])
    reward, reason = _read_reward(box)
    if reward is None:
        return VerifierResult(0.0, reason, tests, output=output[-4000:])
    return VerifierResult(reward, "passed" if reward >= 1.0 else "tests_failed", tests, output=output[-4000:])


def _read_reward(box: DockerSandbox) -> tuple[float | None, str]:
    try:
        text = box.get_file(f"{REWARD_DIR}/reward.txt").decode(errors="replace").strip()
        try:
            return float(text), "ok"
        except ValueError:
            return None, "bad_reward_file"
    except FileNotFoundError:
        pass
    try:
        data = json.loads(box.get_file(f"{REWARD_DIR}/reward.json"))
    except FileNotFoundError:
        return None, "no_reward_file"
    except json.JSONDecodeError:
        return None, "bad_reward_file"
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data), "ok"
    if isinstance(data, dict) and isinstance(data.get("reward"), (int, float)):
        return float(data["reward"]), "ok"
    return None, "bad_reward_file"


def verify_swe(box: DockerSandbox, task: SWETask) -> VerifierResult:
    touched = sorted(set(re.findall(r"^\+\+\+ b/(\S+)", task.test_patch, re.MULTILINE)))
    box.put_files({"/tmp/north_test.patch": task.test_patch})
    # Reset the test files to the base commit (the agent may have edited them), then apply the test patch.
    reset = " ".join(shlex.quote(f) for f in touched)
    script = (
        f"(git checkout -q {shlex.quote(task.base_commit)} -- {reset} 2>/dev/null || true) && "
        if touched else ""
    ) + "git apply --whitespace=nowarn /tmp/north_test.patch"
    if task.test_patch.strip():
        code, output = _run_root(box, script, 60, task.workdir)
        if code != 0:
            return VerifierResult(0.0, "patch_failed", output=output[-4000:])
    files = " ".join(shlex.quote(f) for f in task.test_files)
    code, output = _run_root(box, f"python -m pytest -rA -p no:cacheprovider {files}", task.verifier_timeout_sec,
                             task.workdir)
    outcomes = parse_pytest_outcomes(output)
    if code == 124:
        return VerifierResult(0.0, "verifier_timeout", outcomes, output=output[-4000:])
    tests = {t: outcomes.get(t, "missing") for t in task.fail_to_pass + task.pass_to_pass}
    resolved = all(tests[t] in ("passed", "xpassed") for t in tests)
    return VerifierResult(1.0 if resolved else 0.0, "passed" if resolved else "tests_failed", tests,
                          output=output[-4000:])


def run_oracle(box: DockerSandbox, task: Task) -> tuple[int, str]:
    """Apply the reference solution: `solution/solve.sh` (as the task's agent user) or the SWE `patch`."""
    if isinstance(task, SWETask):
        box.put_files({"/tmp/north_fix.patch": task.patch})
        return box.exec("git apply --whitespace=nowarn /tmp/north_fix.patch", user="root", workdir=task.workdir)
    if task.solution_script is None:
        raise FileNotFoundError(f"{task.path}/solution/solve.sh: missing, cannot run the oracle")
    box.put_dir(task.solution_script.parent, "/solution")
    return box.exec("bash /solution/solve.sh", timeout=task.agent_timeout_sec, workdir=task.workdir)
