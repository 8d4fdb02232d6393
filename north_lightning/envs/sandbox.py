"""A Docker container an agent may run anything in, with limits users can trust.

Defaults: no network unless the task allows it, memory (no swap), CPU and pids limits, a non-root user, every
capability dropped but `KEPT_CAPABILITIES`, the container's whole writable layer bounded (`disk_mb`, on by
default: envs/disk.py), a floor on the engine's free disk space, a per-command timeout enforced twice (GNU
`timeout` inside the container kills the command's whole process group, and a host-side deadline stops waiting
if even that hangs), a wall-clock budget per episode, and removal that cannot be forgotten: a context manager,
plus an atexit hook and SIGTERM/SIGINT handlers that remove every live sandbox of this process. Every container
carries `SANDBOX_LABEL` and its owner's host, uid, pid and pid start time, so `sweep_orphans()` finds what a
SIGKILLed process left behind (and nothing else).

The pieces live beside it: limits and privileges in `sandbox_limits.py`, the exec machinery in
`sandbox_exec.py`, file transfer in `sandbox_files.py`, the removal hooks in `sandbox_cleanup.py`; this module
keeps `DockerSandbox` and re-exports their public names (import them from here).
"""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors

from north_lightning.envs import sandbox_cleanup
from north_lightning.envs.docker_host import (  # noqa: F401  (re-exported: the sandbox's public names)
    BOX_ID_LABEL,
    HOST_LABEL,
    OWNER_HOST_LABEL,
    OWNER_PID_LABEL,
    SANDBOX_LABEL,
    UNREACHABLE_ERRORS,
    HostUnreachable,
    SandboxError,
    docker_client,
    labelled_containers,
    labelled_summaries,
    owner_labels,
    remove_container,
    sweep_orphans,
)
from north_lightning.envs.sandbox_cleanup import (  # noqa: F401
    close_all_sandboxes,
    install_cleanup_hooks,
    wait_for_removals,
)
from north_lightning.envs.sandbox_exec import (  # noqa: F401
    HOST_DEADLINE_SLACK_SEC,
    KILL_GRACE_SEC,
    TIMEOUT_EXIT_CODE,
    ExecResult,
    OutputCapture,
    exit_code_of,
    stream_output,
    wrapped_argv,
)
from north_lightning.envs.sandbox_files import (  # noqa: F401
    GET_FILE_MAX_BYTES,
    TRUNCATION_MARKER,
    dir_archive,
    files_archive,
    read_archive_file,
)
from north_lightning.envs.sandbox_limits import (  # noqa: F401
    AGENT_USER,
    CAPABILITY_REASONS,
    KEPT_CAPABILITIES,
    EpisodeTimeout,
    HostDiskLow,
    SandboxConfig,
    check_host_disk,
    container_options,
    engine_data_root,
)


def _on_engine(method: Any) -> Any:
    """Turns a transport failure of the sandbox's engine (or its host being drained meanwhile) into
    `HostUnreachable`, and tells the fleet, which pings the host and drains it when it does not answer."""

    @functools.wraps(method)
    def call(self: "DockerSandbox", *args: Any, **kwargs: Any) -> Any:
        if self.host_down is not None:
            raise HostUnreachable(f"Docker host {self.host_url} of {self.name} was drained: {self.host_down}")
        try:
            return method(self, *args, **kwargs)
        except UNREACHABLE_ERRORS as err:
            raise self._unreachable(err) from err
        except SandboxError as err:
            if self.host_down is not None and not isinstance(err, HostUnreachable):
                raise HostUnreachable(f"Docker host {self.host_url} of {self.name} was drained: "
                                      f"{self.host_down}") from err
            raise

    return call


class DockerSandbox:
    """One container. `exec(cmd, timeout) -> ExecResult(exit_code, output)`; files in/out by tar; `close()`.

    Use as a context manager, or call `close()`; the process-exit hooks remove it otherwise. Without `client`
    it runs on the local engine, or, when a fleet is configured (`envs/fleet.py`), on the host `start()` places
    it on (`host_url`); a host that stops answering makes its calls raise `HostUnreachable`."""

    def __init__(self, config: SandboxConfig, *, client: docker.DockerClient | None = None):
        from north_lightning.envs.fleet import current_fleet

        self.config = config
        self.fleet = current_fleet() if client is None else None
        self.client = client or (None if self.fleet is not None else docker_client())
        self.host: Any = None  # the fleet's DockerHost holding this sandbox's slot
        self.host_down: str | None = None  # set by the fleet when it drains the host
        self.placed_on = "local"  # the URL of the fleet host it was placed on
        self.box_id = uuid.uuid4().hex
        self.container: Any = None
        self.start_latency_s: float | None = None
        self._deadline: float | None = None
        self._closed = False
        self._disk: Any = None  # envs.disk.LayerDisk when `disk_mb` is set

    # lifecycle
    def start(self) -> "DockerSandbox":
        install_cleanup_hooks()
        with sandbox_cleanup.starting():
            if self.fleet is None:
                return self._start()
            self.host = self.fleet.acquire(self)
            self.placed_on = self.host.url
            try:
                self.client = self.host.client
                return self._start()
            except HostUnreachable as err:  # no client: the engine did not answer at all
                self.fleet.report_failure(self.host, err)
                self._release_host()
                raise
            except UNREACHABLE_ERRORS as err:  # the request may have created the container: remove it later
                self.fleet.strand(self.host, self.box_id)
                unreachable = self._unreachable(err)  # drains the host (before its slot goes back)
                self._release_host()
                raise unreachable from err
            except BaseException:
                if self.container is None:
                    self._release_host()
                raise

    def _start(self) -> "DockerSandbox":
        cfg = self.config
        check_host_disk(self.client, cfg.min_host_free_mb)
        box_id = self.box_id
        labels = {**cfg.labels, SANDBOX_LABEL: "1", **owner_labels(), BOX_ID_LABEL: box_id,
                  **({HOST_LABEL: self.host.url} if self.host is not None else {})}
        started = time.monotonic()
        try:  # look first: `run` would try to pull a missing image from a registry
            self.client.images.get(cfg.image)
        except docker.errors.ImageNotFound as err:
            raise SandboxError(f"image {cfg.image!r} not found locally (no registry is used): build the task "
                               f"image first") from err
        if cfg.disk_mb:
            from north_lightning.envs.disk import LayerDisk

            self._disk = LayerDisk(cfg.disk_mb, box_id[:12])
        container = None
        try:  # create, bound the writable layer, start: what fails on the way leaves nothing behind
            container = self.client.containers.create(
                cfg.image, command=["sleep", "infinity"], init=True, labels=labels, **container_options(cfg))
            if self._disk is not None:
                self._disk.attach(container.attrs)
            container.start()
            if self._disk is not None:
                container.reload()
                self._disk.check(container.attrs)
        except (docker.errors.APIError, SandboxError) as err:
            for stray in labelled_summaries(self.client, f"{BOX_ID_LABEL}={box_id}"):
                remove_container(self.client, stray["Id"])
            if self._disk is not None:
                self._disk.detach()
            if isinstance(err, SandboxError):
                raise
            raise SandboxError(f"cannot start a container from {cfg.image!r}: {err}") from err
        self.container = container
        if not sandbox_cleanup.register(container.id, self):  # a signal arrived while the engine created it
            self.close()
            raise SandboxError("the process is shutting down (signal received): sandbox removed")
        self.start_latency_s = time.monotonic() - started
        self._deadline = time.monotonic() + cfg.episode_timeout_sec
        return self

    def __enter__(self) -> "DockerSandbox":
        return self.start() if self.container is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self, wait: bool = True) -> None:
        """Kill and remove the container. Idempotent and safe to call from any thread or signal handler.
        `wait=False` removes it on a background thread (an episode need not wait for the engine); the
        container stays registered until it is gone, so the exit hooks still cover it."""
        if self._closed or self.container is None:
            return
        self._closed = True
        if wait:
            self._remove()
        else:
            sandbox_cleanup.remove_in_background(self)

    def _remove(self) -> None:
        try:
            if self.host_down is not None:  # a drained host may hang rather than refuse: leave it to the fleet
                self.fleet.strand(self.host, self.box_id)
                return
            self.container.remove(force=True)  # takes the disk bound's mount with the container's layer
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            if "already in progress" not in str(err):
                raise
        except UNREACHABLE_ERRORS as err:
            if self.fleet is None:
                raise
            self.fleet.strand(self.host, self.box_id)  # removed when the host answers again
            self.fleet.report_failure(self.host, err)
        finally:
            sandbox_cleanup.unregister(self.container.id)
            if self._disk is not None and self.host_down is None:
                self._disk.detach()  # only when the engine could not remove the container
            self._release_host()

    def _release_host(self) -> None:
        host, self.host = self.host, None
        if host is not None:
            self.fleet.release(host, self)

    def _unreachable(self, err: BaseException) -> HostUnreachable:
        if self.fleet is not None and self.host is not None:
            self.fleet.report_failure(self.host, err)
        return HostUnreachable(f"Docker host {self.host_url} of {self.name} stopped answering: "
                               f"{type(err).__name__}: {err}")

    @property
    def host_url(self) -> str:
        """The fleet host this sandbox runs on, or "local" (the default engine)."""
        return self.placed_on

    @property
    def name(self) -> str:
        return self.container.name if self.container is not None else "<not started>"

    def remaining_sec(self) -> float:
        return float("inf") if self._deadline is None else self._deadline - time.monotonic()

    @_on_engine
    def is_running(self) -> bool:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return False
        return self.container.status == "running"

    def _stopping(self, settle_sec: float = 2.0) -> bool:
        """Whether the container is going down after a command was SIGKILLed: the engine reports the container
        stopped a moment after the exec (`kill -9 -1` as root takes the container's processes down one by
        one), so a SIGKILLed command waits up to `settle_sec` for that before it counts as the command's own
        exit code; otherwise the death is found only by the next command, and is taken for the host's fault."""
        deadline = time.monotonic() + settle_sec
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def release_disk_reserve(self) -> None:
        """Free the disk bound's grader reserve (envs/disk.py), so the grader can write into a full disk."""
        if self._disk is not None:
            self._disk.release_reserve()

    # commands
    @_on_engine
    def exec(self, cmd: str | list[str], timeout: float | None = None, *, user: str | None = None,
             workdir: str | None = None, env: dict[str, str] | None = None,
             max_output_bytes: int | None = None, outside_episode_budget: bool = False) -> ExecResult:
        """Run `cmd` (a shell string for bash, or an argv) and return its exit code and merged stdout+stderr
        (head and tail kept when longer than `max_output_bytes`). A command that outlives `timeout` is killed
        with its process group and reported with exit code 124. Raises `EpisodeTimeout` once the episode's
        wall-clock budget is spent, unless `outside_episode_budget` (the verifier has its own timeout)."""
        if self.container is None or self._closed:
            raise SandboxError("exec on a sandbox that is not running (start() it / it was closed)")
        check_host_disk(self.client, self.config.min_host_free_mb)
        remaining = float("inf") if outside_episode_budget else self.remaining_sec()
        if remaining <= 0:
            raise EpisodeTimeout(f"episode wall-clock budget of {self.config.episode_timeout_sec:.0f} s spent")
        limit = min(timeout if timeout is not None else self.config.command_timeout_sec, remaining)
        limit = max(limit, 0.1)
        capture = OutputCapture(max_output_bytes or self.config.max_output_bytes)
        try:
            exec_id = self.client.api.exec_create(
                self.container.id, wrapped_argv(cmd, limit), stdout=True, stderr=True,
                user=user or self.config.user, workdir=workdir or self.config.workdir, environment=env,
            )["Id"]
        except docker.errors.NotFound as err:
            raise SandboxError(f"container {self.name} is gone: {err}") from err
        except docker.errors.APIError as err:
            if not self.is_running():
                raise SandboxError(f"container {self.name} is not running: {err}") from err
            raise SandboxError(f"exec failed in {self.name}: {err}") from err
        ended, error = stream_output(self.client.api, exec_id, capture,
                                     limit + KILL_GRACE_SEC + HOST_DEADLINE_SLACK_SEC, self.name,
                                     lambda: self.host_down is not None)
        if self.host_down is not None:  # the fleet drained the host while the command ran
            raise HostUnreachable(f"Docker host {self.host_url} of {self.name} was drained: {self.host_down}")
        if not ended:  # even the in-container timeout did not end it: stop waiting
            return ExecResult(TIMEOUT_EXIT_CODE, capture.text() + f"\n[command timed out after {limit:.0f} s]")
        if error and not self._closed:
            if isinstance(error[0], UNREACHABLE_ERRORS):
                raise self._unreachable(error[0])
            raise SandboxError(f"exec output stream of {self.name} failed: {error[0]}")
        exit_code = exit_code_of(self.client.api, exec_id)
        if exit_code in (-1, 128 + 9) and self._stopping():  # killed because the container went down
            raise SandboxError(f"container {self.name} stopped while running a command")
        output = capture.text()
        if exit_code == TIMEOUT_EXIT_CODE:
            output += f"\n[command timed out after {limit:.0f} s]"
        return ExecResult(exit_code, output)

    # files
    @_on_engine
    def put_files(self, files: dict[str, bytes | str], *, mode: int = 0o644, owner: int | None = None) -> None:
        """Write files at absolute paths; `owner` = uid/gid for the files (default root). Missing parent
        directories are created root-owned by the engine; existing ones keep their owner."""
        if not self.container.put_archive("/", files_archive(files, mode, owner)):
            raise SandboxError(f"put_files into {self.name} failed")

    @_on_engine
    def put_dir(self, host_dir: str | Path, container_dir: str, *, owner: int | None = None) -> None:
        """Copy a host directory's files (modes kept) to `container_dir`."""
        if not self.container.put_archive("/", dir_archive(Path(host_dir), container_dir, owner)):
            raise SandboxError(f"put_dir {host_dir} -> {self.name}:{container_dir} failed")

    @_on_engine
    def get_file(self, path: str, max_bytes: int = GET_FILE_MAX_BYTES) -> bytes:
        """Read one file through the engine (as the daemon: for the grader's reads, which the agent must not be
        able to tamper with; the agent's own tools read inside the container as its user). Streamed, and at
        most `max_bytes` are read: a longer file comes back cut, ending with `TRUNCATION_MARKER`'s line.
        Raises FileNotFoundError when it does not exist or is not a regular file (a symlink is not followed)."""
        try:
            stream, _ = self.client.api.get_archive(self.container.id, path, chunk_size=64 * 1024)
        except docker.errors.NotFound as err:
            raise FileNotFoundError(f"{self.name}:{path}") from err
        return read_archive_file(stream, f"{self.name}:{path}", max_bytes)
