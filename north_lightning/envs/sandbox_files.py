"""Files into and out of a sandbox through the engine (tar archives): writes for the harness and the grader,
and bounded, streamed reads for the grader (reward files, test output), which the agent cannot tamper with. The
agent's own tools read inside the container as its user instead (`envs/swe_tools.py`)."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

GET_FILE_MAX_BYTES = 1 << 20  # what one read of a sandbox file may bring into the host's memory
TRUNCATION_MARKER = "\n[... file truncated: the first {shown} of {size} bytes shown ...]\n"


def files_archive(files: dict[str, bytes | str], mode: int, owner: int | None) -> bytes:
    """A tar of `files` (absolute path -> content), to be extracted at `/`."""
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
    return buf.getvalue()


def dir_archive(host_dir: Path, container_dir: str, owner: int | None) -> bytes:
    """A tar of a host directory's files (modes kept) placed at `container_dir`, to be extracted at `/`."""
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
    return buf.getvalue()


def read_archive_file(stream: Any, where: str, max_bytes: int) -> bytes:
    """The first `max_bytes` of the one regular file in the engine's archive stream (`get_archive`), with
    `TRUNCATION_MARKER`'s line when it is longer. Raises FileNotFoundError when it is not a regular file."""
    try:
        with tarfile.open(fileobj=_ChunkReader(stream), mode="r|") as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise FileNotFoundError(f"{where} is not a regular file")
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
