"""One episode's environment: a task's image, its sandbox, the tools the agent calls, and the verifier.

`TaskSession(task).start()` finds, pulls or builds the task image (`envs/registry.py`; built images are cached
by content; no image at all raises `ImageUnavailable`), starts the sandbox with the task's
limits, and for SWE tasks checks that the repository sits at the record's `base_commit`. `execute(call)` runs
one tool call (terminal keystrokes, bash, the SWE-agent editor, OpenCode file tools, submit) and returns the
observation; `verify()` scores the final state; `close()` removes the container (also via `with`).
"""

from __future__ import annotations

import logging
import shlex
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.envs.images import ImageBuilder
from north_lightning.envs.registry import ImageRecipe, ImageResolver, ResolvedImage
from north_lightning.envs.sandbox import DockerSandbox, HostUnreachable, SandboxConfig, SandboxError
from north_lightning.envs.swe_grader import grade_in_fresh_container
from north_lightning.envs.swe_tools import StrReplaceEditor, opencode_tool, submit_diff
from north_lightning.envs.tasks import HarborTask, SWETask, Task, TaskError, swe_dockerfile
from north_lightning.envs.terminal import TmuxTerminal
from north_lightning.envs.verifier import VerifierResult, run_oracle, verify

log = logging.getLogger(__name__)

_IMAGES: dict[tuple[str, str], ResolvedImage] = {}
_IMAGES_LOCK = threading.Lock()
_AGENT_LAYERS: dict[tuple[str, str], str] = {}  # (image id, workdir) -> tag with the agent layer
_KEY_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_BUILDER: ImageBuilder | None = None
_RESOLVER: ImageResolver | None = None
_RESOLVER_SETTINGS: dict[str, Any] = {}


def image_builder() -> ImageBuilder:
    global _BUILDER
    with _IMAGES_LOCK:
        if _BUILDER is None:
            _BUILDER = ImageBuilder()
        return _BUILDER


def image_resolver() -> ImageResolver:
    """The process-wide resolver `task_image` uses (see `configure_image_resolver`)."""
    global _RESOLVER
    builder = image_builder()
    with _IMAGES_LOCK:
        if _RESOLVER is None:
            _RESOLVER = ImageResolver(builder=builder, **_RESOLVER_SETTINGS)
        return _RESOLVER


def configure_image_resolver(**settings: Any) -> None:
    """Settings of the process-wide resolver, made on first use: `retry=PullRetry(...)`, `pull_policy=`,
    `record_path=` (the JSON of digests, e.g. beside the pool or in the run directory); see
    `envs.registry.ImageResolver`. Images already resolved in this process stay as they are."""
    global _RESOLVER
    unknown = set(settings) - {"retry", "pull_policy", "record_path"}
    if unknown:
        raise ValueError(f"configure_image_resolver: unknown settings {sorted(unknown)}")
    with _IMAGES_LOCK:
        _RESOLVER_SETTINGS.clear()
        _RESOLVER_SETTINGS.update(settings)
        _RESOLVER = None


def task_recipe(task: Task) -> ImageRecipe | None:
    """What the task's image is built from when no registry serves it: a Harbor task's environment/ directory,
    a SWE task's repository copy (None when the record names only an image)."""
    if isinstance(task, SWETask):
        if task.repo_dir is None:
            return None
        return ImageRecipe(Path(task.repo_dir), swe_dockerfile(), ((".dockerignore", "Dockerfile\n.dockerignore\n"),),
                           name=f"swe-{task.repo.replace('/', '-')}")
    return ImageRecipe(task.environment_dir, name=task.task_id)


def image_key(task: Task) -> str:
    """Names the image a task runs in: tasks with the same key share one resolution (used by the prefetcher)."""
    if isinstance(task, SWETask) and task.image:
        return task.image
    return f"{task.kind}:{getattr(task, 'path', None) or task.source or task.task_id}:{task.task_id}"


def resolve_task_image(task: Task, builder: ImageBuilder | None = None,
                       resolver: ImageResolver | None = None) -> ResolvedImage:
    """The task's image: found, pulled or built on first use (per process memo on top of the content-hash cache);
    raises `ImageUnavailable` (an infrastructure failure) when none of these works."""
    resolver = resolver or (ImageResolver(builder=builder) if builder is not None else image_resolver())
    key = (task.kind, str(getattr(task, "path", None) or task.source or task.task_id) + ":" + task.task_id)
    with _IMAGES_LOCK:
        if key in _IMAGES:
            return _IMAGES[key]
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:  # the prefetcher and an episode asking at once: one resolution, the other waits for it
        with _IMAGES_LOCK:
            if key in _IMAGES:
                return _IMAGES[key]
        result = resolver.resolve(task.image if isinstance(task, SWETask) else None, task_recipe(task))
        log.info("task %s: image %s (%s, digest %s, %d pull attempt(s), %.1f s)", task.task_id, result.tag,
                 result.source, result.digest, result.attempts, result.seconds)
        if not isinstance(task, SWETask) and task.workdir is None:  # the Dockerfile's WORKDIR, as Harbor runs there
            task.workdir = resolver.client.images.get(result.tag).attrs["Config"].get("WorkingDir") or "/"
        with _IMAGES_LOCK:
            _IMAGES[key] = result
    return result


def agent_layer(image: str, workdir: str, builder: ImageBuilder, name: str = "task") -> str:
    """`image` plus `AGENT_LAYER` (envs/images.py): the non-root agent account, `workdir` owned by it. Built
    once per image id (the id is in the Dockerfile text, so a moved tag gets a new layer) and memoised."""
    image_id = builder.client.images.get(image).id
    key = (image_id, workdir)
    with _IMAGES_LOCK:
        if key in _AGENT_LAYERS:
            return _AGENT_LAYERS[key]
    text = f"FROM {image}\n# {image_id}\nWORKDIR {workdir}\n"
    with tempfile.TemporaryDirectory(prefix="north_agent_layer_") as context:
        tag = builder.build(context, name=f"{name}-agent", dockerfile_text=text)
    with _IMAGES_LOCK:
        _AGENT_LAYERS[key] = tag
    return tag


def task_image(task: Task, builder: ImageBuilder | None = None, resolver: ImageResolver | None = None) -> str:
    """The tag the task's sandbox runs: its resolved image (see `resolve_task_image`), plus, for a registry's
    image (which our builds did not make), the agent layer that gives the non-root agent its work directory."""
    result = resolve_task_image(task, builder, resolver)
    if result.source == "built":
        return result.tag
    builder = builder or (resolver.builder if resolver is not None else image_resolver().builder)
    return agent_layer(result.tag, task.workdir or "/", builder, task.task_id)


def sandbox_config(task: Task, image: str, **overrides: Any) -> SandboxConfig:
    """The task's limits as a sandbox config (keyword overrides win, e.g. command_timeout_sec=10)."""
    fields = dict(image=image, cpus=task.cpus, memory_mb=task.memory_mb, allow_internet=task.allow_internet,
                  user=task.user, workdir=task.workdir, episode_timeout_sec=task.agent_timeout_sec,
                  labels={"north_lightning.task": task.task_id[:60]},
                  **({"disk_mb": task.disk_mb} if task.disk_mb is not None else {}))
    fields.update(overrides)
    return SandboxConfig(**fields)


@dataclass
class StepResult:
    """What one tool call produced: the observation text, an exit code where one exists, and whether the
    episode is over (submit)."""

    output: str
    exit_code: int | None = None
    done: bool = False


class TaskSession:
    """Sandbox + tools + verifier for one episode of one task."""

    def __init__(self, task: Task, *, builder: ImageBuilder | None = None, **sandbox_overrides: Any):
        self.task = task
        self.builder = builder
        self.sandbox_overrides = sandbox_overrides
        self.box: DockerSandbox | None = None
        self._terminal: TmuxTerminal | None = None
        self._editor: StrReplaceEditor | None = None
        self.submission: str | None = None
        self.image: str | None = None

    def start(self) -> "TaskSession":
        image = self.image = task_image(self.task, self.builder)
        self.box = DockerSandbox(sandbox_config(self.task, image, **self.sandbox_overrides))
        self.box.start()  # kept even when it fails: `box.host_url` says where (a fleet's host)
        try:
            self._check_start(image)
        except BaseException:  # `with` never reaches __exit__ when start() raises: remove the container here
            self.close()
            raise
        return self

    def _check_start(self, image: str) -> None:
        if isinstance(self.task, SWETask):
            if self.task.setup_cmd:  # e.g. SWE-smith: check out the instance branch
                code, out = self.box.exec(self.task.setup_cmd, timeout=300, user="root")
                if code != 0:
                    self.close()
                    raise TaskError(f"{self.task.source}: setup_cmd failed (exit {code}): {out[-500:]}")
            base = shlex.quote(self.task.base_commit + "^{commit}")
            code, head = self.box.exec(f"git rev-parse HEAD && git rev-parse --verify -q {base}", user="root")
            lines = head.split()
            if code != 0 or len(lines) != 2 or lines[0] != lines[1]:
                self.close()
                raise TaskError(f"{self.task.source}: image {image} has {head.strip()!r} at {self.task.workdir} "
                                f"(git exit {code}), not base_commit {self.task.base_commit!r}")

    def __enter__(self) -> "TaskSession":
        return self.start() if self.box is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.box is not None:
            self.box.close(wait=False)  # removal overlaps with the next episode; exit hooks still cover it

    @property
    def terminal(self) -> TmuxTerminal:
        if self._terminal is None:
            self._terminal = TmuxTerminal(self.box)
            self._terminal.start()
        return self._terminal

    @property
    def editor(self) -> StrReplaceEditor:
        if self._editor is None:
            self._editor = StrReplaceEditor(self.box)
        return self._editor

    def execute(self, call: ToolCall) -> StepResult:
        """Run one tool call. Raises SandboxError subclasses (EpisodeTimeout, TerminalDied) when the
        environment itself fails; the agent loop ends the episode with that reason."""
        args = call.arguments
        if call.name == "keystrokes":
            return StepResult(self.terminal.send_keys(str(args.get("keystrokes", "")),
                                                      float(args.get("duration", 1.0))))
        if call.name == "bash":
            timeout = args.get("timeout")  # OpenCode states it in milliseconds
            timeout = float(timeout) / 1000 if isinstance(timeout, (int, float)) and timeout > 0 else None
            command = str(args.get("command", ""))
            workdir = args.get("workdir")  # OpenCode: run there instead of `cd` (relative to the task's dir)
            if isinstance(workdir, str) and workdir:
                # a shell `cd`, not the exec's working dir: a missing directory is the agent's error to read,
                # not a failure of the sandbox
                command = f"cd -- {shlex.quote(workdir)} && {command}"
            code, out = self.box.exec(command, timeout=timeout)
            return StepResult(out, code)
        if call.name == "str_replace_editor":
            return StepResult(self.editor(**args))
        if call.name == "submit":
            base = self.task.base_commit if isinstance(self.task, SWETask) else None
            is_repo = self.box.exec("git rev-parse --is-inside-work-tree", user="root")[0] == 0
            self.submission = submit_diff(self.box, self.task.workdir, base) if is_repo else ""
            return StepResult(self.submission, 0, done=True)
        output, code = opencode_tool(self.box, self.editor, call.name, args)
        return StepResult(output, code)

    def run_oracle(self) -> tuple[int, str]:
        return run_oracle(self.box, self.task)

    def verify(self) -> VerifierResult:
        """Harbor tasks: their tests in this sandbox. SWE tasks: the agent's diff, graded in a fresh container
        from the instance image (`swe_grader`), so nothing the agent did to its container but the diff counts."""
        try:
            if self.box is None or not self.box.is_running():
                return VerifierResult(0.0, "sandbox_gone")
        except HostUnreachable as err:
            return VerifierResult(0.0, "host_down", output=str(err))
        try:
            if isinstance(self.task, SWETask):
                diff = submit_diff(self.box, self.task.workdir, self.task.base_commit)
                if diff.startswith("[submit: git diff failed"):
                    return VerifierResult(0.0, "sandbox_error", output=diff[-4000:])
                return grade_in_fresh_container(self.task, diff, self.image)
            return verify(self.box, self.task)
        except HostUnreachable as err:
            return VerifierResult(0.0, "host_down", output=str(err))
        except SandboxError as err:
            return VerifierResult(0.0, "sandbox_error", output=str(err))


def verify_task(task: Task, *, oracle: bool, builder: ImageBuilder | None = None) -> VerifierResult:
    """`tasks verify`: start the task, optionally apply its reference solution, score it."""
    with TaskSession(task, builder=builder) as session:
        if oracle:
            code, out = session.run_oracle()
            if code != 0:
                result = session.verify()
                result.reason = f"oracle_failed(exit {code}): {result.reason}"
                result.output = out[-2000:] + "\n" + result.output
                return result
        return session.verify()


__all__ = ["HarborTask", "SWETask", "StepResult", "TaskSession", "configure_image_resolver", "image_key",
           "resolve_task_image", "sandbox_config", "task_image", "task_recipe", "verify_task"]
