"""`SocketProxy` in front of a plain TCP echo server on 127.0.0.1 (the registry and sampler-server tests use it that
way; the fleet test covers the unix form in front of the Docker engine): reset-first connections, forwarding both
ways with half-close, a cut that ends open connections and refuses new ones, a restore at the same port."""

from __future__ import annotations

import errno
import socket
import threading

import pytest

from north_lightning.envs.socket_proxy import SocketProxy


@pytest.fixture
def echo_port():
    """A TCP server on 127.0.0.1 that echoes each connection until the client half-closes, then closes it."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _echo(port: int, payload: bytes) -> bytes:
    """Send, half-close, read to EOF: what comes back through the proxy."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_refuses_the_first_connections_then_forwards_both_ways(echo_port):
    proxy = SocketProxy(echo_port, scheme="http", refuse_first=2).start()
    try:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        for _ in range(2):
            # The reset can reach the client before its send, before its half-close or before its read: each
            # shows as a different errno, all of them "the connection was reset"
            with pytest.raises(OSError) as err:
                _echo(proxy.port, b"x")
            assert err.value.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN), err.value
        payload = bytes(range(256)) * 1024  # larger than one recv: several pump rounds each way
        assert _echo(proxy.port, payload) == payload
        assert _echo(proxy.port, b"again") == b"again"
    finally:
        proxy.close()
    assert proxy.refused == 2 and proxy.connections == 2 and proxy.errors == []


def test_cut_ends_open_connections_and_restore_answers_at_the_same_port(echo_port):
    proxy = SocketProxy(echo_port).start()
    try:
        port = proxy.port
        open_conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        open_conn.sendall(b"ping")
        assert open_conn.recv(4) == b"ping"
        proxy.cut()
        try:
            assert open_conn.recv(4) == b""  # the host went away under an open connection
        except ConnectionResetError:
            pass
        finally:
            open_conn.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)
        proxy.restore()
        assert proxy.port == port and _echo(port, b"back") == b"back"
    finally:
        proxy.close()
    assert proxy.connections == 2
