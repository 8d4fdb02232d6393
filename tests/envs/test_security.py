"""Hostile agents in real containers: each attack is contained, the episode ends with a recorded reason,
the host is unaffected, and parallel episodes do not interfere. (The session finaliser in conftest.py
asserts that no container is left behind.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from north_lightning.formats.harnesses import get_harness
from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.records import Step, Trajectory
from north_lightning.rl.scripted_policy import OraclePolicy, ScriptedPolicy, assistant_text
from north_lightning.envs.toy_tasks import generate_toy_tasks
from north_lightning.envs.tasks import load_harbor_task
from north_lightning.rl.rollout import EpisodeJob, RolloutConfig, run_episode, run_episodes

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _turns(tokenizer, harness_name: str, commands: list[str]) -> list[str]:
    """Assistant turns running `commands` one per turn in `harness_name`'s format."""
    harness = get_harness(harness_name, workdir="/app")
    steps = tuple(Step(calls=(ToolCall("bash", {"command": c}),)) for c in commands)
    messages = harness.render(Trajectory(id="x", task="t", source="s", steps=steps))
    return [assistant_text(tokenizer, m, harness.tools()) for m in messages if m["role"] == "assistant"]


@pytest.fixture(scope="module")
def toy_task(bundled_tasks):
    return next(t for t in bundled_tasks if t.task_id == "toy-arith-cbfa16cc")


def _observations(ep) -> list[str]:
    return [str(m["content"]) for m in ep.messages[2:] if m["role"] in ("user", "tool")]


def _host_ok() -> None:
    pid = os.fork()  # the host can still create processes
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0


def _run(tokenizer, task, harness, commands, **cfg):
    policy = ScriptedPolicy(tokenizer, _turns(tokenizer, harness, commands))
    config = RolloutConfig(max_steps=len(commands), command_timeout_sec=cfg.pop("command_timeout_sec", 10), **cfg)
    started = time.monotonic()
    ep = run_episode(policy, harness, tokenizer, task, config=config)
    return ep, time.monotonic() - started


def test_fork_bomb_is_contained(tokenizer, toy_task):
    ep, took = _run(tokenizer, toy_task, "mini_swe_agent", [":(){ :|:& };:", "echo still-alive"])
    assert ep.end_reason == "max_steps" and ep.steps == 2 and took < 60
    assert "still-alive" in _observations(ep)[-1]  # the bomb's leftovers died with their command
    _host_ok()


def test_fork_bomb_in_the_terminal_is_contained(tokenizer, toy_task):
    ep, took = _run(tokenizer, toy_task, "terminus2", [":(){ :|:& };:", "echo done"], episode_timeout_sec=15)
    # the bomb fills the pids limit: the terminal may keep working, or stop answering (no fork left for tmux)
    assert ep.end_reason in ("max_steps", "episode_timeout", "context_limit", "terminal_died") and took < 90
    _host_ok()


def test_memory_hog_is_killed_and_the_episode_goes_on(tokenizer, toy_task):
    ep, _ = _run(tokenizer, toy_task, "mini_swe_agent",
                 ["python3 -c 'x = bytearray(3 * 1024 ** 3); print(len(x))'", "echo still-alive"])
    hog, after = _observations(ep)[-2:]
    assert "<returncode>0</returncode>" not in hog and "3221225472" not in hog
    assert "still-alive" in after and ep.end_reason == "max_steps"


def test_outbound_network_is_blocked(tokenizer, toy_task):
    probe = ("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=5); print('CONNECTED')\"")
    ep, _ = _run(tokenizer, toy_task, "mini_swe_agent", [probe])
    out = _observations(ep)[-1] if _observations(ep) else ""
    assert ep.end_reason == "max_steps"
    assert "CONNECTED" not in out and ("unreachable" in out or "Errno" in out), out


def test_infinite_loop_times_out_and_the_episode_budget_ends_it(tokenizer, toy_task):
    ep, took = _run(tokenizer, toy_task, "mini_swe_agent", ["while true; do :; done", "echo still-alive"],
                    command_timeout_sec=2)
    loop, after = _observations(ep)[-2:]
    assert "124" in loop and "timed out" in loop and "still-alive" in after
    ep, took = _run(tokenizer, toy_task, "mini_swe_agent", ["while true; do :; done"] * 10, command_timeout_sec=3,
                    episode_timeout_sec=5)
    assert ep.end_reason == "episode_timeout" and ep.steps < 10 and took < 40
    assert ep.verifier is not None and ep.reward == 0.0  # the verifier still ran on its own budget


def test_writing_outside_the_work_dir_is_denied_and_never_reaches_the_host(tokenizer, toy_task):
    marker = f"north-escape-{os.getpid()}"
    ep, _ = _run(tokenizer, toy_task, "mini_swe_agent",
                 [f"echo {marker} >> /etc/passwd; echo {marker} > /{marker}; echo {marker} > /usr/bin/{marker}; "
                  f"echo {marker} > /tmp/{marker} && echo wrote-tmp"])
    out = _observations(ep)[-1]
    assert out.count("Permission denied") == 3 and "wrote-tmp" in out
    assert not Path(f"/{marker}").exists() and not Path(f"/tmp/{marker}").exists()
    assert marker not in Path("/etc/passwd").read_text()


def test_killing_tmux_from_inside_ends_the_episode(tokenizer, toy_task):
    ep, _ = _run(tokenizer, toy_task, "terminus2", ["tmux kill-server", "echo unreachable"])
    assert ep.end_reason == "terminal_died" and ep.steps == 1
    assert ep.verifier is not None and ep.reward == 0.0


def test_eight_parallel_episodes_do_not_interfere(tokenizer, base_image, tmp_path):
    tasks = [load_harbor_task(t.materialize(tmp_path)) for t in generate_toy_tasks(8, seed=11, families=("write_file",))]
    assert len({t.instruction for t in tasks}) == 8
    policy = OraclePolicy(tokenizer, "mini_swe_agent", tasks)
    jobs = [EpisodeJob(task, "mini_swe_agent", seed=i) for i, task in enumerate(tasks)]
    episodes = run_episodes(policy, tokenizer, jobs, concurrency=8)
    assert [ep.task_id for ep in episodes] == [t.task_id for t in tasks]
    assert all((ep.reward, ep.end_reason) == (1.0, "submitted") for ep in episodes), [
        (ep.task_id, ep.end_reason, ep.verifier) for ep in episodes]
    # every verifier saw only its own task's file: a cross-write would have failed another task's test


def test_killing_every_process_as_root_ends_the_episode(tokenizer, bundled_tasks):
    root_task = next(t for t in bundled_tasks if t.task_id == "json-port")  # a task whose agent is root
    assert root_task.user == "root"
    ep, _ = _run(tokenizer, root_task, "mini_swe_agent", ["kill -9 -1", "sleep 2; echo unreachable", "sleep 5"])
    assert ep.end_reason == "sandbox_error" and ep.reward == 0.0
    assert ep.verifier["reason"] == "sandbox_gone"
    _host_ok()
