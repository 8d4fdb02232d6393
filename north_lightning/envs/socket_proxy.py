"""A stand-in for a remote Docker host: a byte forwarder from a unix socket (or a 127.0.0.1 TCP port) to the local
engine's socket, which can be cut (listener and every open connection closed, as when a host dies or its
network goes) and restored. The fleet test and `bench/env_throughput.py` put two of these in front of the one
engine of this machine to have two "hosts"; nothing in a run uses it.

The unix form is preferred: its socket lives in a directory only its creator can enter, while a TCP port on
127.0.0.1 lets any local user reach the engine for as long as the proxy runs.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path


class SocketProxy:
    """`SocketProxy(unix_path=...)` or `SocketProxy()` (TCP on 127.0.0.1, a free port); `.start()`, `.url`,
    `.cut()`, `.restore()`, `.close()`."""

    def __init__(self, target: str = "/var/run/docker.sock", *, unix_path: str | Path | None = None) -> None:
        self.target = target
        self.unix_path = str(unix_path) if unix_path is not None else None
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._up = False
        self.connections = 0  # accepted so far (the bench reports it)

    @property
    def url(self) -> str:
        return f"unix://{self.unix_path}" if self.unix_path else f"tcp://127.0.0.1:{self.port}"

    def start(self) -> "SocketProxy":
        if self.unix_path:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.unix_path)
            os.chmod(self.unix_path, 0o600)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            self.port = listener.getsockname()[1]
        listener.listen(128)
        listener.settimeout(0.1)  # the accept loop checks `_up` between waits (close() does not wake accept)
        self._listener, self._up = listener, True
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"proxy-{self.url}").start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while self._up and self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self._up:
                    client.close()
                    upstream.close()
                    continue
                self._conns |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for sock in (src, dst):
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self) -> None:
        """The host stops answering: no new connection is accepted and every open one is closed."""
        with self._lock:
            self._up = False
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            listener.close()
        for sock in conns:
            self._drop(sock)

    def restore(self) -> None:
        """The host answers again, at the same address."""
        self.start()

    def close(self) -> None:
        self.cut()
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)
