"""A stand-in for a remote host: a byte forwarder from a unix socket (or a 127.0.0.1 TCP port) to a local server
(a unix socket path, by default the Docker engine's, or a 127.0.0.1 TCP port), which can be cut (listener and every
open connection closed, as when a host dies or its network goes) and restored. Nothing in a run uses it:
- the fleet test and `bench/env_throughput.py` put two in front of the one engine of this machine to have two
  Docker "hosts";
- the sampler-server tests put one in front of a `vllm serve` (`scheme="http"`): closing it is a sampler node
  going away, a new one on the same `port` (or `restore()`) is that node coming back;
- the registry test resets the first `refuse_first` connections (RST, as a registry restarting behind a load
  balancer does) and forwards the rest.

The unix form is preferred in front of the engine: its socket lives in a directory only its creator can enter,
while a TCP port on 127.0.0.1 lets any local user reach the engine for as long as the proxy runs.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path


class SocketProxy:
    """`SocketProxy(target, unix_path=...)` or `SocketProxy(target)` (TCP on 127.0.0.1, `port` or a free one);
    `target` is a unix socket path or a TCP port on 127.0.0.1. `.start()`, `.url` (`unix://`, or `scheme://` with
    the TCP port), `.cut()`, `.restore()`, `.close()`; `.connections` forwarded, `.refused` reset."""

    def __init__(self, target: str | int = "/var/run/docker.sock", *, unix_path: str | Path | None = None,
                 port: int = 0, scheme: str = "tcp", refuse_first: int = 0) -> None:
        self.target = target
        self.unix_path = str(unix_path) if unix_path is not None else None
        self.port, self.scheme, self.refuse_first = port, scheme, refuse_first
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._up = False
        self.connections = 0  # forwarded so far (the bench reports it)
        self.refused = 0  # reset at accept, the first `refuse_first`
        self.errors: list[str] = []  # connections that failed other than by a cut (for tests and the bench)

    @property
    def url(self) -> str:
        return f"unix://{self.unix_path}" if self.unix_path else f"{self.scheme}://127.0.0.1:{self.port}"

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
            if self.refused < self.refuse_first:
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                client.close()
                continue
            try:
                upstream = self._connect_upstream()
            except OSError as err:
                self.errors.append(f"upstream connect: {err!r}")
                client.close()
                continue
            with self._lock:
                if not self._up:
                    client.close()
                    upstream.close()
                    continue
                self._conns |= {client, upstream}
                self.connections += 1
            open_ways = [2]  # both directions of the pair; the sockets are closed when both have ended
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, open_ways), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.target, int):
            return socket.create_connection(("127.0.0.1", self.target))
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.target)
        except OSError:
            upstream.close()
            raise
        return upstream

    def _pump(self, src: socket.socket, dst: socket.socket, open_ways: list[int]) -> None:
        """Copy src -> dst until EOF (then half-close dst) or an error / a cut (then shut both down). Only the
        last of the pair's two pumps closes the sockets: closing one another thread may be reading would free
        its descriptor for reuse by a new connection while that thread still reads it."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    break
                dst.sendall(data)
        except OSError as err:
            if self._up:
                self.errors.append(f"pump: {err!r}")
            self._shut(src, dst)
        with self._lock:
            open_ways[0] -= 1
            last = open_ways[0] == 0
            if last:
                self._conns -= {src, dst}
        if last:
            src.close()
            dst.close()

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv; the descriptor stays ours
            except OSError:
                pass

    def cut(self) -> None:
        """The host stops answering: no new connection is accepted and every open one is shut down."""
        with self._lock:
            self._up = False
            listener, self._listener = self._listener, None
            conns = list(self._conns)
        if listener is not None:
            self._shut(listener)  # stops listening now: a bare close leaves the port open while accept still polls it
            listener.close()
        self._shut(*conns)

    def restore(self) -> None:
        """The host answers again, at the same address."""
        self.start()

    def close(self) -> None:
        self.cut()
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)
