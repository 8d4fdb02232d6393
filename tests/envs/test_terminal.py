"""tmux terminal tool: chunked keys, completion via tmux wait-for, incremental output, truncation."""

from __future__ import annotations

import time

import pytest

from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig
from north_lightning.envs.terminal import TerminalDied, TmuxTerminal, head_tail

pytestmark = pytest.mark.docker


@pytest.fixture
def term(base_image):
    with DockerSandbox(SandboxConfig(image=base_image, user="agent")) as box:
        terminal = TmuxTerminal(box, max_output_chars=4000)
        assert terminal.start().endswith("agent@sandbox:/app# ")
        yield terminal


def test_completion_is_detected_before_the_duration(term):
    started = time.monotonic()
    out = term.send_keys("echo hello\n", duration=20)
    assert time.monotonic() - started < 5
    assert out == "agent@sandbox:/app# echo hello\nhello\nagent@sandbox:/app# "


def test_output_is_incremental(term):
    term.send_keys("echo first\n", 5)
    out = term.send_keys("echo second\n", 5)
    assert "first" not in out and "second\n" in out


def test_running_command_returns_after_duration_and_can_be_interrupted(term):
    started = time.monotonic()
    out = term.send_keys("sleep 30\n", duration=1)
    assert 0.9 < time.monotonic() - started < 6
    assert out.endswith("sleep 30")
    out = term.send_keys("C-c", duration=2)
    assert "^C" in out and out.endswith("agent@sandbox:/app# ")


def test_long_keystrokes_are_sent_in_chunks(term):
    payload = "x" * 5000
    out = term.send_keys(f"echo {payload} | wc -c\n", 10)
    assert "5001" in out


def test_long_output_keeps_head_and_tail(term):
    out = term.send_keys("seq 1 5000\n", 10)
    assert out.startswith("agent@sandbox:/app# seq 1 5000\n1\n2\n") and out.rstrip().endswith("agent@sandbox:/app#")
    assert "characters omitted" in out and "5000" in out


def test_multiline_heredoc_and_interactive_program(term):
    term.send_keys("cat > /app/n.txt <<EOF\nline one\nEOF\n", 5)
    assert "line one" in term.send_keys("cat /app/n.txt\n", 5)
    term.send_keys("python3\n", 2)
    assert "42" in term.send_keys("print(6 * 7)\n", 1)
    assert term.send_keys("exit()\n", 5).endswith("agent@sandbox:/app# ")


def test_killing_tmux_from_inside_is_detected(term):
    with pytest.raises(TerminalDied):
        term.send_keys("tmux kill-server\n", 2)


def test_head_tail():
    assert head_tail("abc", 10) == "abc"
    cut = head_tail("a" * 50 + "b" * 50, 20)
    assert cut.startswith("a" * 10) and cut.endswith("b" * 10) and "80 characters omitted" in cut
