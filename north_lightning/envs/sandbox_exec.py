"""One command in a sandbox: killed with its whole process group when it outlives its timeout (GNU `timeout`
inside the container, and a host-side deadline in case even that hangs), its output kept bounded (head and
tail) whatever it prints."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, NamedTuple

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


class ExecResult(NamedTuple):
    exit_code: int
    output: str

    @property
    def timed_out(self) -> bool:
        return self.exit_code == TIMEOUT_EXIT_CODE


def wrapped_argv(cmd: str | list[str], limit_sec: float) -> list[str]:
    """`cmd` (a shell string for bash, or an argv) under the in-container timeout wrapper."""
    inner = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    return ["bash", "-c", _EXEC_WRAPPER, "sandbox-exec", f"{limit_sec:.1f}", *inner]


class OutputCapture:
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


def stream_output(api: Any, exec_id: str, capture: OutputCapture, wait_sec: float, name: str,
                  stop: Any) -> tuple[bool, list[BaseException]]:
    """Read the exec's output into `capture` on a reader thread for at most `wait_sec` (or until `stop()` says
    the host was drained). Returns (whether it ended in time, the reader's errors)."""
    error: list[BaseException] = []

    def read() -> None:
        try:
            for chunk in api.exec_start(exec_id, stream=True, demux=False):
                capture.add(chunk)
        except Exception as err:  # noqa: BLE001 - surfaced to the caller
            error.append(err)

    reader = threading.Thread(target=read, daemon=True, name=f"exec-{name}")
    reader.start()
    wait_until = time.monotonic() + wait_sec
    while reader.is_alive() and not stop() and time.monotonic() < wait_until:
        reader.join(min(0.25, max(0.0, wait_until - time.monotonic())))  # returns as soon as it ends
    return not reader.is_alive(), error


def exit_code_of(api: Any, exec_id: str) -> int:
    """The exec's exit code (-1 when the engine never recorded one): the output stream can end a moment
    before the engine records the exit."""
    info = api.exec_inspect(exec_id)
    for _ in range(100):
        if not info.get("Running") and info.get("ExitCode") is not None:
            break
        time.sleep(0.05)
        info = api.exec_inspect(exec_id)
    return -1 if info.get("ExitCode") is None else int(info["ExitCode"])
