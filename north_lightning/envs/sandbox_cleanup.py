"""Removal that cannot be forgotten: the process-wide registry of the sandboxes this process owns, whatever
thread started them, an atexit hook, and SIGTERM/SIGINT handlers that remove every one of them.

Signal handlers run on the main thread only and can only be installed from it, so entry points (the `tasks` and
`eval` CLIs, `run_episodes`) call `install_cleanup_hooks()` there before any worker thread starts a sandbox; a
sandbox started on the main thread installs them itself.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import docker.errors

from north_lightning.envs.docker_host import SandboxError

_LIVE: dict[str, Any] = {}  # container id -> DockerSandbox
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


@contextmanager
def starting() -> Iterator[None]:
    """Counts a sandbox whose container is being created (a signal handler waits for those), and refuses to
    start one once a signal has arrived."""
    global _STARTING
    with _LIVE_LOCK:
        if _SHUTTING_DOWN:
            raise SandboxError("the process is shutting down (signal received): no new sandbox")
        _STARTING += 1
    try:
        yield
    finally:
        with _LIVE_LOCK:
            _STARTING -= 1


def register(container_id: str, box: Any) -> bool:
    """Adds a started sandbox to the registry; False when a signal arrived meanwhile (the caller removes it)."""
    with _LIVE_LOCK:
        _LIVE[container_id] = box
    return not _SHUTTING_DOWN


def unregister(container_id: str) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(container_id, None)
        _REMOVALS.discard(threading.current_thread())


def remove_in_background(box: Any) -> None:
    """`box._remove()` on a daemon thread that `wait_for_removals` can wait for."""
    thread = threading.Thread(target=box._remove, daemon=True, name=f"remove-{box.name}")
    with _LIVE_LOCK:
        _REMOVALS.add(thread)
    thread.start()
