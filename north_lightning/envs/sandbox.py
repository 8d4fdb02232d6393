"""A Docker container an agent may run anything in, with limits users can trust.

Defaults: no network unless the task allows it, memory (no swap), CPU and pids limits, a non-root user, every
capability dropped but `KEPT_CAPABILITIES`, a floor on the engine's free disk space, a per-command timeout
enforced twice (GNU `timeout` inside the container kills the command's whole process group, and a host-side
deadline stops waiting if even that hangs), a wall-clock budget per episode, and
removal that cannot be forgotten: a context manager, plus an atexit hook and SIGTERM/SIGINT handlers that remove
every live sandbox of this process. Every container carries `SANDBOX_LABEL` and its owner's host, uid, pid and
pid start time, so `sweep_orphans()` finds what a SIGKILLed process left behind (and nothing else).
"""

from __future__ import annotations

import atexit
import functools
import io
import os
import signal
import tarfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import docker
import docker.errors

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

GET_FILE_MAX_BYTES = 1 << 20  # what one read of a sandbox file may bring into the host's memory
TRUNCATION_MARKER = "\n[... file truncated: the first {shown} of {size} bytes shown ...]\n"
TIMEOUT_EXIT_CODE = 124  # what GNU `timeout` returns; the host-side deadline reports the same
KILL_GRACE_SEC = 2.0  # SIGTERM -> SIGKILL grace of the in-container `timeout`
HOST_DEADLINE_SLACK_SEC = 10.0
# `timeout` makes itself a process-group leader; once it returns, whatever the command left running in that
# group (background jobs, a fork bomb) is killed too, so nothing outlives its command or holds the output open.
# Long-running servers belong in the tmux terminal, whose shell is not an exec.
_EXEC_WRAPPER = (
    f'T=$1; shift; exec 2>&1; timeout -k {KILL_GRACE_SEC:g} "$T" "$@" & p=$!; wait $p; rc=$?; '
    'kill -9 -- -$p 2>/dev/null; exit $rc'
)


# Every capability but these is dropped: enough for root in the container to own, chmod and kill its files
# and processes and for `su`/`setpriv` to switch users; nothing for devices, raw sockets, chroot or capabilities.
KEPT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")


class HostDiskLow(SandboxError):
    """The Docker engine's disk has less free space than `min_host_free_mb`: an infrastructure failure."""


_DATA_ROOT: dict[int, str | None] = {}


def engine_data_root(client: docker.DockerClient) -> str | None:
    """The engine's data root when it is on this machine (a unix socket; a tcp:// or ssh:// engine's disk cannot
    be watched from here). Asked once per client."""
    if id(client) not in _DATA_ROOT:
        from north_lightning.envs.fleet import is_local_engine

        root = client.info().get("DockerRootDir") if is_local_engine(client) else None
        _DATA_ROOT[id(client)] = root if root and os.path.isdir(root) else None
    return _DATA_ROOT[id(client)]


def check_host_disk(client: docker.DockerClient, min_free_mb: int) -> None:
    root = engine_data_root(client)
    if root is None or min_free_mb <= 0:
        return
    stat = os.statvfs(root)
    free_mb = stat.f_bavail * stat.f_frsize / 2**20
    if free_mb < min_free_mb:
        raise HostDiskLow(f"the Docker engine's disk ({root}) has {free_mb:.0f} MB free, under the "
                          f"{min_free_mb} MB floor (min_host_free_mb): no sandbox writes more")


class EpisodeTimeout(SandboxError):
    """The episode's wall-clock budget is spent; the caller ends the episode with reason `episode_timeout`."""


class ExecResult(NamedTuple):
    exit_code: int
    output: str

    @property
    def timed_out(self) -> bool:
        return self.exit_code == TIMEOUT_EXIT_CODE


@dataclass
class SandboxConfig:
    """Limits and identity of one sandbox. Tasks fill it from their `[environment]` / `[agent]` tables."""

    image: str
    cpus: float = 1.0
    memory_mb: int = 1024
    pids_limit: int = 256
    allow_internet: bool = False
    user: str = "agent"  # user commands run as by default: the base image's non-root account (tasks that need
    # root say so: `[environment] user = "root"`)
    workdir: str = "/app"
    command_timeout_sec: float = 60.0
    episode_timeout_sec: float = 900.0
    max_output_bytes: int = 64_000
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # the engine's disk (its data root) must keep this much free: below it no sandbox starts and running ones
    # refuse commands with `HostDiskLow`, an infrastructure failure, before a writing agent fills the host
    min_host_free_mb: int = 2048
    # a size-limited work directory: a loop-backed ext4 volume of this many MB at `workdir` (writes past it get
    # ENOSPC in the container; needs root and a local engine, see envs/disk.py); None: the workdir is unbounded.
    # Default: $NORTH_SANDBOX_DISK_MB, so an operator bounds every sandbox of a run without touching tasks
    disk_mb: int | None = field(default_factory=lambda: int(os.environ["NORTH_SANDBOX_DISK_MB"])
                                if os.environ.get("NORTH_SANDBOX_DISK_MB") else None)


# ---- guaranteed removal -------------------------------------------------------------------------------------
# The process-wide registry of the containers this process owns, whatever thread started them. Signal handlers
# run on the main thread only and can only be installed from it, so entry points (the `tasks` and `eval` CLIs,
# `run_episodes`) call `install_cleanup_hooks()` there before any worker thread starts a sandbox; a sandbox
# started on the main thread installs them itself.
_LIVE: dict[str, "DockerSandbox"] = {}
_LIVE_LOCK = threading.RLock()  # re-entrant: a signal handler may interrupt the main thread while it holds it
_ATEXIT_INSTALLED = False
_SIGNALS_INSTALLED = False
_REMOVALS: set[threading.Thread] = set()
_STARTING = 0  # sandboxes being created right now (not yet in _LIVE)
_SHUTTING_DOWN = False  # set by a signal: no new sandbox may start
_IN_FLIGHT_WAIT_SEC = 15.0


def wait_for_removals(timeout: float = 60.0) -> None:
    """Block until the background removals started by `close(wait=False)` are done."""
    deadline = time.monotonic() + timeout
    while True:
        with _LIVE_LOCK:
            pending = list(_REMOVALS)
        if not pending or time.monotonic() > deadline:
            return
        pending[0].join(max(0.0, deadline - time.monotonic()))


def close_all_sandboxes() -> int:
    """Remove every sandbox this process still holds (background removals included); returns how many."""
    with _LIVE_LOCK:
        live = list(_LIVE.values())
    for box in live:
        box._closed = True
        try:
            box._remove()
        except docker.errors.APIError:
            pass  # the engine refused (it is shutting down too): nothing more can be done from here
    return len(live)


def _close_all_for_signal() -> None:
    """Stop new sandboxes, remove the live ones, then those whose creation was in flight on other threads."""
    global _SHUTTING_DOWN
    _SHUTTING_DOWN = True
    close_all_sandboxes()
    deadline = time.monotonic() + _IN_FLIGHT_WAIT_SEC
    while _STARTING and time.monotonic() < deadline:
        time.sleep(0.05)
    close_all_sandboxes()


def _signal_handler(signum: int, frame: Any) -> None:
    global _SHUTTING_DOWN
    _close_all_for_signal()
    previous = _PREVIOUS_HANDLERS.get(signum)
    if callable(previous):  # e.g. KeyboardInterrupt: the process may go on, and start sandboxes again
        _SHUTTING_DOWN = False
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        _SHUTTING_DOWN = False
    else:  # default action: die of the same signal
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_PREVIOUS_HANDLERS: dict[int, Any] = {}


def install_cleanup_hooks() -> bool:
    """An atexit hook (once per process) and, when called on the main thread, SIGTERM/SIGINT handlers that
    remove every sandbox of the process and then chain to whatever was installed before. Returns whether the
    signal handlers are in place (they cannot be installed from another thread; a later main-thread call
    installs them)."""
    global _ATEXIT_INSTALLED, _SIGNALS_INSTALLED
    with _LIVE_LOCK:
        if not _ATEXIT_INSTALLED:
            _ATEXIT_INSTALLED = True
            atexit.register(close_all_sandboxes)
        if _SIGNALS_INSTALLED or threading.current_thread() is not threading.main_thread():
            return _SIGNALS_INSTALLED
        for signum in (signal.SIGTERM, signal.SIGINT):
            _PREVIOUS_HANDLERS[signum] = signal.getsignal(signum)
            signal.signal(signum, _signal_handler)
        _SIGNALS_INSTALLED = True
        return True


# ---- the sandbox --------------------------------------------------------------------------------------------
class _OutputCapture:
    """Keeps the first and last `limit/2` bytes of a stream: bounded memory whatever the command prints."""

    def __init__(self, limit: int):
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail.append(chunk)
            self.tail_len += len(chunk)
            while self.tail_len - len(self.tail[0]) >= self.half:
                self.tail_len -= len(self.tail.popleft())

    def text(self) -> str:
        tail = b"".join(self.tail)
        dropped = self.total - len(self.head) - len(tail)
        if dropped <= 0:
            return (bytes(self.head) + tail).decode(errors="replace")
        tail = tail[-self.half:]
        dropped = self.total - len(self.head) - len(tail)
        return (bytes(self.head).decode(errors="replace") + f"\n[... {dropped} bytes of output omitted ...]\n"
                + tail.decode(errors="replace"))


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
        self._disk: Any = None  # envs.disk.WorkVolume when `disk_mb` is set

    # lifecycle
    def start(self) -> "DockerSandbox":
        global _STARTING
        install_cleanup_hooks()
        with _LIVE_LOCK:
            if _SHUTTING_DOWN:
                raise SandboxError("the process is shutting down (signal received): no new sandbox")
            _STARTING += 1
        try:
            if self.fleet is not None:
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
            return self._start()
        finally:
            with _LIVE_LOCK:
                _STARTING -= 1

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
        volumes = None
        if cfg.disk_mb:
            from north_lightning.envs.disk import WorkVolume
            from north_lightning.envs.fleet import is_local_engine

            if not is_local_engine(self.client):
                raise SandboxError(f"disk_mb needs an engine on this machine (a unix:// host), not {self.host_url}")

            self._disk = WorkVolume(self.client, box_id, cfg.disk_mb, labels)
            volumes = {self._disk.create(): {"bind": cfg.workdir, "mode": "rw"}}
        try:
            self.container = self.client.containers.run(
                cfg.image, command=["sleep", "infinity"], detach=True, init=True, labels=labels,
                network_mode="bridge" if cfg.allow_internet else "none",
                mem_limit=f"{cfg.memory_mb}m", memswap_limit=f"{cfg.memory_mb}m",
                nano_cpus=int(cfg.cpus * 1e9), pids_limit=cfg.pids_limit,
                working_dir=cfg.workdir, environment=cfg.env, hostname="sandbox",
                security_opt=["no-new-privileges"], cap_drop=["ALL"], cap_add=list(KEPT_CAPABILITIES),
                volumes=volumes,
            )
        except docker.errors.APIError as err:
            # `run` = create + start: a container that was created but failed to start must not linger
            for stray in labelled_summaries(self.client, f"{BOX_ID_LABEL}={box_id}"):
                remove_container(self.client, stray["Id"])
            if self._disk is not None:
                self._disk.remove()
            raise SandboxError(f"cannot start a container from {cfg.image!r}: {err}") from err
        with _LIVE_LOCK:
            _LIVE[self.container.id] = self
        if _SHUTTING_DOWN:  # a signal arrived while the engine created it, and its handler stopped waiting
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
            thread = threading.Thread(target=self._remove, daemon=True, name=f"remove-{self.name}")
            with _LIVE_LOCK:
                _REMOVALS.add(thread)
            thread.start()

    def _remove(self) -> None:
        try:
            if self.host_down is not None:  # a drained host may hang rather than refuse: leave it to the fleet
                self.fleet.strand(self.host, self.box_id)
                return
            self.container.remove(force=True)
            if self._disk is not None:
                self._disk.remove()
        except docker.errors.NotFound:
            if self._disk is not None:
                self._disk.remove()
        except docker.errors.APIError as err:
            if "already in progress" not in str(err):
                raise
        except UNREACHABLE_ERRORS as err:
            if self.fleet is None:
                raise
            self.fleet.strand(self.host, self.box_id)  # removed when the host answers again
            self.fleet.report_failure(self.host, err)
        finally:
            with _LIVE_LOCK:
                _LIVE.pop(self.container.id, None)
                _REMOVALS.discard(threading.current_thread())
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
        inner = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        argv = ["bash", "-c", _EXEC_WRAPPER, "sandbox-exec", f"{limit:.1f}", *inner]
        capture = _OutputCapture(max_output_bytes or self.config.max_output_bytes)
        try:
            exec_id = self.client.api.exec_create(
                self.container.id, argv, stdout=True, stderr=True, user=user or self.config.user,
                workdir=workdir or self.config.workdir, environment=env,
            )["Id"]
        except docker.errors.NotFound as err:
            raise SandboxError(f"container {self.name} is gone: {err}") from err
        except docker.errors.APIError as err:
            if not self.is_running():
                raise SandboxError(f"container {self.name} is not running: {err}") from err
            raise SandboxError(f"exec failed in {self.name}: {err}") from err
        error: list[BaseException] = []

        def read() -> None:
            try:
                for chunk in self.client.api.exec_start(exec_id, stream=True, demux=False):
                    capture.add(chunk)
            except Exception as err:  # noqa: BLE001 - surfaced to the caller below
                error.append(err)

        reader = threading.Thread(target=read, daemon=True, name=f"exec-{self.name}")
        reader.start()
        wait_until = time.monotonic() + limit + KILL_GRACE_SEC + HOST_DEADLINE_SLACK_SEC
        while reader.is_alive() and self.host_down is None and time.monotonic() < wait_until:
            reader.join(min(0.25, max(0.0, wait_until - time.monotonic())))  # returns as soon as it ends
        if self.host_down is not None:  # the fleet drained the host while the command ran
            raise HostUnreachable(f"Docker host {self.host_url} of {self.name} was drained: {self.host_down}")
        if reader.is_alive():  # even the in-container timeout did not end it: stop waiting
            return ExecResult(TIMEOUT_EXIT_CODE, capture.text() + f"\n[command timed out after {limit:.0f} s]")
        if error and not self._closed:
            if isinstance(error[0], UNREACHABLE_ERRORS):
                raise self._unreachable(error[0])
            raise SandboxError(f"exec output stream of {self.name} failed: {error[0]}")
        info = self.client.api.exec_inspect(exec_id)
        for _ in range(100):  # the output stream can end a moment before the engine records the exit
            if not info.get("Running") and info.get("ExitCode") is not None:
                break
            time.sleep(0.05)
            info = self.client.api.exec_inspect(exec_id)
        exit_code = -1 if info.get("ExitCode") is None else int(info["ExitCode"])
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
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, content in files.items():
                rel = PurePosixPath(path)
                if not rel.is_absolute():
                    raise ValueError(f"put_files: {path!r} is not an absolute path")
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(str(rel).lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                info.uid = info.gid = owner or 0
                tar.addfile(info, io.BytesIO(data))
        if not self.container.put_archive("/", buf.getvalue()):
            raise SandboxError(f"put_files into {self.name} failed")

    @_on_engine
    def put_dir(self, host_dir: str | Path, container_dir: str, *, owner: int | None = None) -> None:
        """Copy a host directory's files (modes kept) to `container_dir`."""
        host_dir = Path(host_dir)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path in sorted(host_dir.rglob("*")):
                arcname = str(PurePosixPath(container_dir) / path.relative_to(host_dir).as_posix()).lstrip("/")
                info = tar.gettarinfo(str(path), arcname=arcname)
                info.uid = info.gid = owner or 0
                info.uname = info.gname = ""
                if path.is_file():
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        if not self.container.put_archive("/", buf.getvalue()):
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
        try:
            with tarfile.open(fileobj=_ChunkReader(stream), mode="r|") as tar:
                member = tar.next()
                if member is None or not member.isfile():
                    raise FileNotFoundError(f"{self.name}:{path} is not a regular file")
                data = tar.extractfile(member).read(max_bytes)
        finally:
            stream.close()  # the rest of a long file is never transferred
        if member.size > max_bytes:
            data += TRUNCATION_MARKER.format(shown=len(data), size=member.size).encode()
        return data


class _ChunkReader(io.RawIOBase):
    """A file-like view of the engine's chunk iterator, for tarfile's streaming mode (bounded memory)."""

    def __init__(self, chunks: Any) -> None:
        self.chunks = iter(chunks)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            try:
                self.pending = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n
