"""Grading a SWE instance as the benchmark grades it: in a fresh container, not the one the agent had root in.

The agent's container only yields its diff (`git diff` against the base commit, `swe_tools.submit_diff`). A new
container from the instance image then (1) runs the instance's `setup_cmd` (SWE-smith checks out the instance
branch) and checks that HEAD is the base commit, (2) applies the diff (`git apply`, then `patch --fuzz` as the
SWE-bench harness falls back to), (3) resets the files the test patch touches to the base commit and applies
the test patch, (4) runs the test command, and (5) the runner's log parser decides every test; the reward is 1
iff every FAIL_TO_PASS test passes and every PASS_TO_PASS test still passes (`log_parsers.resolve`).

A diff that does not apply is the agent's failure (reward 0, `patch_failed`); a test patch that does not apply,
a container that cannot start or a base commit that is not there is the environment's (`INFRA_REASONS`, which
callers must not train on). Tests that outlive the time limit score 0 (`verifier_timeout`), as in SWE-bench.
"""

from __future__ import annotations

import re
import shlex
import time

from north_lightning.envs.log_parsers import parse_log, resolve
from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig, SandboxError
from north_lightning.envs.tasks import SWETask
from north_lightning.envs.verifier import VerifierResult

AGENT_PATCH = "/tmp/north_agent.patch"
TEST_PATCH = "/tmp/north_test.patch"
# The reasons that say the environment failed, not the policy. A test run that times out is not among them:
# a patch with an endless loop must cost reward (SWE-bench scores a timeout as unresolved), and the grader's
# own time limit is generous; a grader that cannot set up, or whose container dies, is.
INFRA_REASONS = ("container_failed", "base_commit_missing", "setup_failed", "test_patch_failed", "sandbox_error",
                 "host_down")  # host_down: the Docker host stopped answering (envs/fleet.py)
# SWE-bench-family images keep the repository's environment in a conda env their eval scripts activate first
CONDA_ACTIVATE = ("if [ -f /opt/miniconda3/bin/activate ]; then . /opt/miniconda3/bin/activate && "
                  "conda activate testbed; fi; ")
APPLY_COMMANDS = ("git apply --verbose {p}", "git apply --verbose --reject {p}", "patch --batch --fuzz=5 -p1 -i {p}")


def default_test_command(task: SWETask) -> str:
    """The runner's command when the instance names none: pytest on the files of the test ids, `go test -v`
    on every package, `python -m unittest -v` discovering from the repository root."""
    if task.log_parser.startswith("pytest") or task.log_parser == "r2e-pytest":
        files = " ".join(shlex.quote(f) for f in task.test_files)
        return f"python -m pytest -rA -p no:cacheprovider {files}"
    if task.log_parser == "sympy":  # as SWE-bench runs SymPy's own runner, on the files the test patch touches
        files = " ".join(shlex.quote(f) for f in sorted(set(re.findall(r"^\+\+\+ b/(\S+)", task.test_patch,
                                                                         re.MULTILINE))))
        return f"PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' bin/test -C --verbose {files}"
    if task.log_parser == "go":
        return "go test -v ./... 2>&1"
    if task.log_parser in ("unittest", "django"):
        return "python -m unittest -v 2>&1"
    raise ValueError(f"{task.source}: no default test command for log parser {task.log_parser!r}: set 'test_cmd'")


def _apply(box: DockerSandbox, path: str, workdir: str) -> tuple[bool, str]:
    output = ""
    for template in APPLY_COMMANDS:
        code, out = box.exec(template.format(p=path), timeout=120, user="root", workdir=workdir,
                             outside_episode_budget=True)
        output += f"$ {template.format(p=path)}\n{out[-2000:]}\n"
        if code == 0:
            return True, output
        box.exec("git checkout -q -- . && git clean -fdq", timeout=60, user="root", workdir=workdir,
                 outside_episode_budget=True)  # undo a partial --reject before the next try
    return False, output


def grade_in_fresh_container(task: SWETask, diff: str, image: str, *, timeout: float | None = None,
                             client=None) -> VerifierResult:
    """Apply `diff` and the test patch in a new container from `image`, run the tests, score them."""
    started = time.monotonic()
    timeout = timeout or task.verifier_timeout_sec
    config = SandboxConfig(image=image, cpus=task.cpus, memory_mb=task.memory_mb, allow_internet=False,
                           user="root", workdir=task.workdir, episode_timeout_sec=timeout + 600,
                           labels={"north_lightning.task": task.instance_id[:60], "north_lightning.role": "grader"})

    def done(reward: float, reason: str, tests=None, output: str = "") -> VerifierResult:
        return VerifierResult(reward, reason, tests or {}, time.monotonic() - started, output[-4000:])

    try:
        box = DockerSandbox(config, client=client).start()
    except SandboxError as err:
        return done(0.0, "container_failed", output=str(err))
    try:
        with box:
            wd = task.workdir
            if task.setup_cmd:
                code, out = box.exec(task.setup_cmd, timeout=300, user="root", workdir=wd, outside_episode_budget=True)
                if code != 0:
                    return done(0.0, "setup_failed", output=out)
            base = shlex.quote(task.base_commit + "^{commit}")
            code, out = box.exec(f"test \"$(git rev-parse HEAD)\" = \"$(git rev-parse --verify -q {base})\"",
                                 timeout=60, user="root", workdir=wd, outside_episode_budget=True)
            if code != 0:
                return done(0.0, "base_commit_missing", output=f"HEAD is not {task.base_commit}\n{out}")
            log = ""
            if diff.strip():
                box.put_files({AGENT_PATCH: diff if diff.endswith("\n") else diff + "\n"})
                ok, log = _apply(box, AGENT_PATCH, wd)
                if not ok:
                    return done(0.0, "patch_failed", output=log)
            if task.test_patch.strip():
                touched = sorted(set(re.findall(r"^\+\+\+ b/(\S+)", task.test_patch, re.MULTILINE))
                                 | set(re.findall(r"^--- a/(\S+)", task.test_patch, re.MULTILINE)))
                box.put_files({TEST_PATCH: task.test_patch})
                reset = " ".join(shlex.quote(f) for f in touched)
                code, out = box.exec(
                    (f"(git checkout -q {shlex.quote(task.base_commit)} -- {reset} 2>/dev/null || true); " if touched
                     else "") + f"git apply --verbose {TEST_PATCH}",
                    timeout=120, user="root", workdir=wd, outside_episode_budget=True)
                if code != 0:
                    return done(0.0, "test_patch_failed", output=out)
            command = CONDA_ACTIVATE + (task.test_cmd or default_test_command(task))
            code, output = box.exec(command, timeout=timeout, user="root", workdir=wd, max_output_bytes=2_000_000,
                                    outside_episode_budget=True)
            statuses = parse_log(output, task.log_parser)
            if code == 124:
                return done(0.0, "verifier_timeout", statuses, output)
            resolved, tests = resolve(statuses, task.fail_to_pass, task.pass_to_pass, task.expected_status)
            return done(1.0 if resolved else 0.0, "passed" if resolved else "tests_failed", tests, log + output)
    except SandboxError as err:
        return done(0.0, "sandbox_error", output=str(err))
