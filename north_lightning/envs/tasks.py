"""Task definitions: Harbor task directories (terminal tasks) and SWE-bench-style JSONL records (SWE tasks).

A Harbor task directory holds `instruction.md`, `task.toml` (`[agent] timeout_sec`, `[verifier] timeout_sec`,
`[environment] cpus / memory_mb / allow_internet`, plus our `[agent] max_steps` and `[environment] user /
workdir / disk_mb`), `environment/Dockerfile`, `tests/test.sh` (writes the reward to /logs/verifier/reward.txt or
reward.json) and optionally `solution/solve.sh`. A SWE record names a repository at a base commit, the fix
(`patch`), the tests that prove it (`test_patch`, `FAIL_TO_PASS`, `PASS_TO_PASS`) and the issue text. A bad
file raises `TaskError` naming the file (and line / key) at fault.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

AGENT_USER = "agent"  # the non-root account every task image has (envs/images.py: AGENT_LAYER)
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"  # terminal/ (Harbor dirs) and swe/ (tasks.jsonl, repos/)
DEFAULT_MAX_STEPS = 30
DEFAULT_AGENT_TIMEOUT_SEC = 900.0
DEFAULT_VERIFIER_TIMEOUT_SEC = 300.0
SWE_WORKDIR = "/testbed"
# Fixed identity and dates make the commit of a bundled repository (its `base_commit`) reproducible.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "north", "GIT_AUTHOR_EMAIL": "north@localhost", "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "north", "GIT_COMMITTER_EMAIL": "north@localhost",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z",
}
GIT_COMMIT_SCRIPT = "git init -q && git add -A && git commit -q -m base && git rev-parse HEAD"


class TaskError(ValueError):
    """A task file that cannot be used; the message names the file and the key or line at fault."""


@dataclass
class HarborTask:
    """A terminal task in Harbor's directory format."""

    task_id: str
    path: Path
    instruction: str
    agent_timeout_sec: float = DEFAULT_AGENT_TIMEOUT_SEC
    verifier_timeout_sec: float = DEFAULT_VERIFIER_TIMEOUT_SEC
    cpus: float = 1.0
    memory_mb: int = 2048
    allow_internet: bool = False
    max_steps: int = DEFAULT_MAX_STEPS
    user: str = AGENT_USER  # who the agent's commands run as; "root" only when the task says so
    disk_mb: int | None = None  # the sandbox's disk bound (None: the run's default, envs/disk.py; 0: none)
    # None: the image's WORKDIR (filled in when the image is built, see `session.task_image`)
    workdir: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: str = "terminal"

    @property
    def environment_dir(self) -> Path:
        return self.path / "environment"

    @property
    def tests_dir(self) -> Path:
        return self.path / "tests"

    @property
    def solution_script(self) -> Path | None:
        path = self.path / "solution" / "solve.sh"
        return path if path.is_file() else None


@dataclass
class SWETask:
    """A SWE-bench-style instance. `image` names a prebuilt image holding the repo at `base_commit` in
    /testbed (pulled from its registry when the engine lacks it); `repo_dir` (a local copy of the repository
    at that commit) is the recipe built into one when there is no `image` or no registry serves it."""

    instance_id: str
    repo: str
    base_commit: str
    patch: str
    test_patch: str
    problem_statement: str
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    source: str = ""
    image: str | None = None
    repo_dir: Path | None = None
    max_steps: int = DEFAULT_MAX_STEPS
    agent_timeout_sec: float = DEFAULT_AGENT_TIMEOUT_SEC
    verifier_timeout_sec: float = DEFAULT_VERIFIER_TIMEOUT_SEC
    cpus: float = 1.0
    memory_mb: int = 2048
    allow_internet: bool = False
    user: str = AGENT_USER  # the instance image's repository is owned by this user (envs/session.py)
    disk_mb: int | None = None
    workdir: str = SWE_WORKDIR
    # Imported pools (envs/swe_pool.py): how the benchmark runs and reads the tests. Empty test_cmd = pytest
    # on the test files named by the ids; log_parser = a name in envs/log_parsers.PARSERS.
    version: str = ""
    test_cmd: str = ""
    log_parser: str = "pytest"
    setup_cmd: str = ""  # run once in a fresh container before anything (e.g. SWE-smith's branch checkout)
    expected_status: dict[str, str] | None = None  # R2E-Gym: every listed test must end in this status
    kind: str = "swe"

    @property
    def task_id(self) -> str:
        return self.instance_id

    @property
    def instruction(self) -> str:
        return self.problem_statement

    @property
    def test_files(self) -> list[str]:
        """Files the verifier runs: those named by the test ids (`path::name`)."""
        return sorted({test.split("::")[0] for test in self.fail_to_pass + self.pass_to_pass})


Task = Union[HarborTask, SWETask]


# ---- Harbor directories ---------------------------------------------------------------------------------------
def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str) -> Any:
    value = table.get(key, default)
    if value is default:
        return default
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise TaskError(f"{where}.{key}: expected {kind}, got a boolean")
    if not isinstance(value, kind):
        raise TaskError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__} {value!r}")
    return value


def _memory_mb(env: dict[str, Any], where: str) -> int:
    if "memory_mb" in env:
        return int(_get(env, "memory_mb", (int, float), None, where))
    if "memory" in env:  # Harbor also accepts "2G" / "512M"
        text = str(env["memory"]).strip().upper()
        units = {"G": 1024, "M": 1, "GB": 1024, "MB": 1}
        for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
            if text.endswith(suffix):
                try:
                    return int(float(text[: -len(suffix)]) * factor)
                except ValueError:
                    break
        raise TaskError(f"{where}.memory: cannot read {env['memory']!r} (use e.g. \"2G\" or memory_mb = 2048)")
    return 2048


def _disk_mb(value: int | None, where: str) -> int | None:
    if value is not None and value != 0 and value < 8:
        raise TaskError(f"{where}.disk_mb: expected 0 (no bound) or at least 8 MB, got {value}")
    return value


def load_harbor_task(path: str | Path) -> HarborTask:
    """Read one Harbor task directory; raises TaskError naming the file/key that is wrong."""
    path = Path(path)
    toml_path, instruction_path = path / "task.toml", path / "instruction.md"
    for required in (toml_path, instruction_path, path / "environment" / "Dockerfile", path / "tests" / "test.sh"):
        if not required.is_file():
            raise TaskError(f"{required}: missing (a Harbor task needs instruction.md, task.toml, "
                            "environment/Dockerfile and tests/test.sh)")
    try:
        config = tomllib.loads(toml_path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise TaskError(f"{toml_path}: invalid TOML: {err}") from err
    where = str(toml_path)
    agent = _get(config, "agent", dict, {}, where)
    verifier = _get(config, "verifier", dict, {}, where)
    env = _get(config, "environment", dict, {}, where)
    metadata = _get(config, "metadata", dict, {}, where)
    max_steps = int(_get(agent, "max_steps", int, DEFAULT_MAX_STEPS, f"{where}: [agent]"))
    if max_steps < 1:
        raise TaskError(f"{where}: [agent].max_steps must be >= 1, got {max_steps}")
    instruction = instruction_path.read_text().strip()
    if not instruction:
        raise TaskError(f"{instruction_path}: empty instruction")
    return HarborTask(
        task_id=path.resolve().name, path=path.resolve(), instruction=instruction,
        agent_timeout_sec=float(_get(agent, "timeout_sec", (int, float), DEFAULT_AGENT_TIMEOUT_SEC, f"{where}: [agent]")),
        verifier_timeout_sec=float(_get(verifier, "timeout_sec", (int, float), DEFAULT_VERIFIER_TIMEOUT_SEC,
                                        f"{where}: [verifier]")),
        cpus=float(_get(env, "cpus", (int, float), 1.0, f"{where}: [environment]")),
        memory_mb=_memory_mb(env, f"{where}: [environment]"),
        allow_internet=bool(_get(env, "allow_internet", bool, False, f"{where}: [environment]")),
        max_steps=max_steps,
        user=str(_get(env, "user", str, AGENT_USER, f"{where}: [environment]")),
        disk_mb=_disk_mb(_get(env, "disk_mb", int, None, f"{where}: [environment]"), f"{where}: [environment]"),
        workdir=_get(env, "workdir", str, None, f"{where}: [environment]"),
        metadata=metadata,
    )


# ---- SWE-bench-style JSONL ---------------------------------------------------------------------------------------
SWE_REQUIRED = ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement",
                "FAIL_TO_PASS", "PASS_TO_PASS")


def _test_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):  # SWE-bench ships these lists as JSON strings
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise TaskError(f"{where}: not a JSON list of test ids: {err}") from err
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise TaskError(f"{where}: expected a list of test ids (strings), got {value!r:.200}")
    return value


def _expected_status(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TaskError(f"{where}: expected an object of test id -> status")
    return value


def _record_user(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TaskError(f"{where}: expected a user name (e.g. \"root\"), got {value!r}")
    return value


def _record_int(value: Any, where: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TaskError(f"{where}: expected a whole number, got {value!r}")
    return value


def load_swe_jsonl(path: str | Path) -> list[SWETask]:
    """Read SWE-bench-style records. Optional keys: `image`, `max_steps`, `agent_timeout_sec`,
    `verifier_timeout_sec`, `memory_mb`, `cpus`, `user` (default the non-root `agent`), `disk_mb`, and those `tasks import` writes (`version`, `test_cmd`,
    `log_parser`, `setup_cmd`, `expected_status`). The repository copy (the image recipe; required without
    `image`) is looked up at `<jsonl dir>/repos/<repo with / replaced by __>`."""
    path = Path(path)
    tasks: list[SWETask] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{where}: invalid JSON: {err}") from err
        if not isinstance(record, dict):
            raise TaskError(f"{where}: expected a JSON object")
        for key in SWE_REQUIRED:
            if key not in record:
                raise TaskError(f"{where}: missing key {key!r}")
        for key in ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement"):
            if not isinstance(record[key], str) or (key != "test_patch" and not record[key].strip()):
                raise TaskError(f"{where}: key {key!r} must be a non-empty string")
        if record["instance_id"] in seen:
            raise TaskError(f"{where}: duplicate instance_id {record['instance_id']!r}")
        seen.add(record["instance_id"])
        f2p = _test_list(record["FAIL_TO_PASS"], f"{where}: key 'FAIL_TO_PASS'")
        if not f2p:
            raise TaskError(f"{where}: key 'FAIL_TO_PASS' is empty (nothing would prove the fix)")
        # The repository copy is the recipe an instance image is built from when no registry serves `image`.
        repo_dir: Path | None = path.parent / "repos" / record["repo"].replace("/", "__")
        if not repo_dir.is_dir():
            if not record.get("image"):
                raise TaskError(f"{where}: no key 'image' and no repository directory {repo_dir}")
            repo_dir = None
        tasks.append(SWETask(
            instance_id=record["instance_id"], repo=record["repo"], base_commit=record["base_commit"],
            patch=record["patch"], test_patch=record["test_patch"], problem_statement=record["problem_statement"],
            fail_to_pass=f2p, pass_to_pass=_test_list(record["PASS_TO_PASS"], f"{where}: key 'PASS_TO_PASS'"),
            source=where, image=record.get("image"), repo_dir=repo_dir,
            max_steps=int(record.get("max_steps", DEFAULT_MAX_STEPS)),
            agent_timeout_sec=float(record.get("agent_timeout_sec", DEFAULT_AGENT_TIMEOUT_SEC)),
            verifier_timeout_sec=float(record.get("verifier_timeout_sec", DEFAULT_VERIFIER_TIMEOUT_SEC)),
            cpus=float(record.get("cpus", 1.0)), memory_mb=int(record.get("memory_mb", 2048)),
            version=str(record.get("version") or ""), test_cmd=str(record.get("test_cmd") or ""),
            log_parser=str(record.get("log_parser") or "pytest"), setup_cmd=str(record.get("setup_cmd") or ""),
            expected_status=_expected_status(record.get("expected_status"), f"{where}: key 'expected_status'"),
            user=_record_user(record.get("user", AGENT_USER), f"{where}: key 'user'"),
            disk_mb=_disk_mb(_record_int(record.get("disk_mb"), f"{where}: key 'disk_mb'"), f"{where}: key 'disk_mb'"),
        ))
    return tasks


def load_tasks(path: str | Path) -> list[Task]:
    """A Harbor task dir, a folder of them (recursively), or a SWE-bench-style .jsonl (or a folder holding
    any mix of these), in a stable order."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".jsonl":
            return list(load_swe_jsonl(path))
        raise TaskError(f"{path}: not a task directory or a .jsonl file of SWE-style records")
    if not path.is_dir():
        raise TaskError(f"{path}: no such task directory or file")
    if (path / "task.toml").is_file():
        return [load_harbor_task(path)]
    tasks: list[Task] = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and child.name != "repos":
            tasks.extend(load_tasks(child))
        elif child.suffix == ".jsonl":
            tasks.extend(load_swe_jsonl(child))
    return tasks


def repo_commit(repo_dir: str | Path) -> str:
    """The commit hash a bundled repository gets inside its image (fixed identity and dates): lets a JSONL
    record state its `base_commit` before any image exists."""
    with tempfile.TemporaryDirectory(prefix="north_repo_") as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(repo_dir, work, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc"))
        proc = subprocess.run(["bash", "-c", GIT_COMMIT_SCRIPT], cwd=work, capture_output=True, text=True,
                              env={**os.environ, **GIT_ENV, "GIT_CONFIG_GLOBAL": "/dev/null"})
        if proc.returncode != 0:
            raise TaskError(f"{repo_dir}: cannot commit the repository: {proc.stderr.strip()}")
        return proc.stdout.strip().splitlines()[-1]


def swe_dockerfile() -> str:
    """The image of a bundled SWE repository: the base, the repo committed at /testbed and owned by the agent."""
    env = " ".join(f"{k}={json.dumps(v)}" for k, v in GIT_ENV.items())
    return (
        "FROM north-lightning/base:latest\n"
        f"COPY . {SWE_WORKDIR}/\n"
        f"WORKDIR {SWE_WORKDIR}\n"
        f"RUN {env} GIT_CONFIG_GLOBAL=/dev/null bash -c '{GIT_COMMIT_SCRIPT}' "
        f"&& git config --system --add safe.directory '*' && chown -R {AGENT_USER}:{AGENT_USER} {SWE_WORKDIR}\n"
    )


def load_task_pool(path: str | Path) -> list[Task]:
    """The tasks kept by `tasks filter` (its JSON output), each with the step budget the filter assigned.
    Entries point at a Harbor task dir or at `<file>.jsonl:<line>` for SWE records."""
    path = Path(path)
    try:
        pool = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TaskError(f"{path}: cannot read the task pool: {err}") from err
    if not isinstance(pool, dict) or not isinstance(pool.get("kept"), list):
        raise TaskError(f"{path}: expected the JSON written by `tasks filter` (an object with a 'kept' list)")
    tasks: list[Task] = []
    jsonl_cache: dict[str, dict[str, SWETask]] = {}
    for i, entry in enumerate(pool["kept"]):
        where = f"{path}: kept[{i}]"
        if not isinstance(entry, dict) or not entry.get("path") or not entry.get("task_id"):
            raise TaskError(f"{where}: needs 'task_id' and 'path'")
        source = str(entry["path"])
        file_part = source.rsplit(":", 1)[0] if source.rsplit(":", 1)[-1].isdigit() else source
        if file_part.endswith(".jsonl"):
            by_id = jsonl_cache.setdefault(file_part, {t.instance_id: t for t in load_swe_jsonl(file_part)})
            if entry["task_id"] not in by_id:
                raise TaskError(f"{where}: {entry['task_id']!r} is not in {file_part}")
            task: Task = by_id[entry["task_id"]]
        else:
            task = load_harbor_task(file_part)
        if "max_steps" in entry:
            if not isinstance(entry["max_steps"], int) or entry["max_steps"] < 1:
                raise TaskError(f"{where}: 'max_steps' must be a positive integer")
            task.max_steps = entry["max_steps"]
        tasks.append(task)
    return tasks
