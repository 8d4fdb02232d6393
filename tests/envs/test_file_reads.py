"""File reads cannot escape the sandbox's limits: a huge (sparse) file read through the editor or the engine
brings a bounded amount into the host's memory, cut with a visible marker; the editor reads as the sandbox's
user, so file permissions apply to it as they do to `cat`."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from north_lightning.envs.sandbox import GET_FILE_MAX_BYTES, DockerSandbox, SandboxConfig
from north_lightning.envs.swe_tools import StrReplaceEditor, opencode_tool

pytestmark = pytest.mark.docker

HOST_GROWTH_LIMIT = 150 * 2**20


@pytest.fixture
def box(base_image):
    config = SandboxConfig(image=base_image, user="agent", memory_mb=512, command_timeout_sec=60)
    with DockerSandbox(config) as sandbox:
        yield sandbox


class PeakRSS:
    """The host process's peak RSS growth while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> "PeakRSS":
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.growth = self.peak - self.base


def test_a_huge_sparse_file_is_read_bounded_and_marked(box):
    assert box.exec("truncate -s 1500M ~/big.txt && echo ok").output == "ok\n"
    editor = StrReplaceEditor(box)
    with PeakRSS() as rss:
        viewed = editor("view", "/home/agent/big.txt")
        read, _ = opencode_tool(box, editor, "read", {"filePath": "/home/agent/big.txt", "limit": 3})
        edit = editor("str_replace", "/home/agent/big.txt", old_str="\0", new_str="x")
        raw = box.get_file("/home/agent/big.txt")
    assert rss.growth < HOST_GROWTH_LIMIT, f"host RSS grew by {rss.growth / 2**20:.0f} MiB"
    assert "<response clipped>" in viewed  # the editor's own clip note
    assert "more than this editor handles" in edit
    assert len(raw) < GET_FILE_MAX_BYTES + 200
    assert raw.endswith(f"[... file truncated: the first {GET_FILE_MAX_BYTES} of {1500 * 2**20} bytes shown ...]\n"
                        .encode())
    assert box.exec("stat -c %s ~/big.txt").output == f"{1500 * 2**20}\n"  # not edited


def test_the_editor_reads_with_the_agents_permissions(box):
    assert box.exec("cat /etc/shadow").exit_code != 0
    viewed = StrReplaceEditor(box)("view", "/etc/shadow")
    assert "Permission denied" in viewed and "root:" not in viewed
    read, code = opencode_tool(box, StrReplaceEditor(box), "read", {"filePath": "/etc/shadow"})
    assert code == 1 and "root:" not in read
    assert b"root:" in box.get_file("/etc/shadow")  # the grader's reads stay daemon-side
