"""A fleet of Docker hosts on one machine: two `SocketProxy` stand-ins (named as such: a unix socket and a
127.0.0.1 TCP port) in front of the one real engine play two hosts. One is cut while episodes run on it: every
episode ends exactly once, the cut host's episodes come back as `infra_error:host_down` and are retried on the
other host, the cut host is drained, and once it answers again what was stranded on it is removed: no container
of this process is left. The orphan sweep runs per host and leaves other users' containers alone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from north_lightning.cli.eval import load_config
from north_lightning.envs.docker_host import (
    HOST_LABEL,
    OWNER_UID_LABEL,
    SANDBOX_LABEL,
    docker_client,
    labelled_containers,
    labelled_summaries,
    owner_labels,
)
from north_lightning.envs.fleet import (
    DockerFleet,
    HOSTS_ENV,
    NoHostAvailable,
    configure_docker_hosts,
    parse_docker_hosts,
)
from north_lightning.envs.sandbox import wait_for_removals
from north_lightning.envs.session import TaskSession
from north_lightning.envs.socket_proxy import SocketProxy
from north_lightning.rl.rollout import RolloutConfig, run_episode, run_episode_retrying
from north_lightning.rl.scripted_policy import OraclePolicy

pytestmark = [pytest.mark.docker]
HARNESS = "mini_swe_agent"  # plain execs (no tmux): the shortest real episodes


@pytest.fixture
def proxies(docker_ready, tmp_path):
    """Host A behind a unix socket (the one cut), host B behind a TCP port on 127.0.0.1."""
    a = SocketProxy(unix_path=tmp_path / "a.sock").start()
    b = SocketProxy().start()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def fleet_reset(proxies):
    yield
    configure_docker_hosts(None)  # back to the local engine for the rest of the session
    wait_for_removals()
    client = docker_client()  # a failed run may leave containers stranded on the cut host: ours by host label
    for proxy in proxies:
        for summary in labelled_summaries(client, SANDBOX_LABEL, f"{HOST_LABEL}={proxy.url}"):
            client.api.remove_container(summary["Id"], force=True)


def test_docker_hosts_config_errors_name_the_entry(tmp_path):
    assert parse_docker_hosts("unix:///x.sock, tcp://10.0.0.2:2375") == parse_docker_hosts(
        ["unix:///x.sock", {"url": "tcp://10.0.0.2:2375", "max_sandboxes": 8}])
    assert parse_docker_hosts([{"url": "ssh://me@node", "max_sandboxes": 3}])[0].max_sandboxes == 3
    for bad, message in [(["http://x:1"], r"docker_hosts\[0\]: 'http://x:1' is not a Docker host URL"),
                         (["tcp://a:1", {"url": "tcp://b:1", "max_sandboxes": 0}], r"docker_hosts\[1\].max_sandboxes"),
                         (["tcp://a:1", "tcp://a:1"], r"docker_hosts\[1\]: 'tcp://a:1' is listed twice"),
                         ([{"host": "tcp://a:1"}], r"docker_hosts\[0\]: expected keys url"), ([], "non-empty")]:
        with pytest.raises(ValueError, match=message):
            parse_docker_hosts(bad)
    config = tmp_path / "eval.yaml"
    config.write_text("tasks: [x]\npolicy: {class_path: a.B}\ndocker_hosts: [unix:///x.sock, 'ftp://x']\n")
    with pytest.raises(ValueError, match=r"eval.yaml: docker_hosts\[1\]: 'ftp://x' is not a Docker host URL"):
        load_config(str(config), [])
    assert load_config(str(config), ["docker_hosts=[tcp://10.0.0.2:2375]"]).docker_hosts == ["tcp://10.0.0.2:2375"]


def test_least_loaded_placement_under_caps_and_dead_host_at_start(proxies):
    a, b = proxies
    fleet = DockerFleet(parse_docker_hosts([{"url": a.url, "max_sandboxes": 2}, {"url": b.url, "max_sandboxes": 1}]),
                        monitor=False, acquire_timeout_s=0.5)
    try:
        first, second, third = fleet.acquire(), fleet.acquire(), fleet.acquire()
        # A empty (0/2) first; then B at 0/1 beats A at 1/2; then only A has room
        assert [h.url for h in (first, second, third)] == [a.url, b.url, a.url]
        with pytest.raises(NoHostAvailable, match="stayed full"):
            fleet.acquire()
        fleet.release(second)
        assert fleet.acquire().url == b.url
    finally:
        fleet.close()
    a.cut()
    fleet = DockerFleet(parse_docker_hosts([a.url, b.url]), monitor=False, acquire_timeout_s=0.5)
    try:  # a host that does not answer at start is drained: everything goes to the other one
        assert fleet.stats()[a.url]["drained"] and [fleet.acquire().url for _ in range(3)] == [b.url] * 3
    finally:
        fleet.close()


class SlowPolicy:
    """The oracle, with a pause per turn standing in for generation time, so episodes are mid-run at the cut."""

    def __init__(self, inner: OraclePolicy, pause_s: float) -> None:
        self.inner, self.pause_s, self.policy_version = inner, pause_s, 0

    def generate(self, prompts, **kw):
        time.sleep(self.pause_s)
        return self.inner.generate(prompts, **kw)


def test_host_cut_mid_run_episodes_end_once_and_retry_on_the_other_host(proxies, fleet_reset, bundled_tasks,
                                                                         tokenizer):
    a, b = proxies
    fleet = configure_docker_hosts([{"url": a.url, "max_sandboxes": 2}, {"url": b.url, "max_sandboxes": 2}],
                                   probe_interval_s=0.5, probe_timeout_s=2.0)
    tasks = [t for t in bundled_tasks if t.kind == "terminal"][:6]
    policy = SlowPolicy(OraclePolicy(tokenizer, HARNESS, tasks), pause_s=0.4)
    config = RolloutConfig(max_tokens_per_turn=1024, infra_retries=2)
    attempts: dict[int, list[tuple[str, str]]] = {i: [] for i in range(len(tasks))}

    def job(i: int):
        def attempt():
            sessions: list[TaskSession] = []

            def session(task, **kw):
                sessions.append(TaskSession(task, **kw))
                return sessions[-1]

            try:
                ep = run_episode(policy, HARNESS, tokenizer, tasks[i], config=config, seed=i, session_factory=session)
            except Exception as err:  # an environment that did not start: recorded, then retried by the caller
                box = sessions[-1].box if sessions else None
                attempts[i].append((box.host_url if box else "?", f"env_start:{type(err).__name__}: {str(err)[:300]}"))
                raise
            attempts[i].append((sessions[-1].box.host_url, ep.end_reason))
            return ep

        return run_episode_retrying(attempt, tasks[i], retries=config.infra_retries)

    host_a = fleet.hosts[0]

    def cut_when_busy():  # both of A's slots hold a started container (its agent mid-episode): cut it under them
        deadline = time.monotonic() + 30
        while (sum(box.container is not None for box in list(host_a.boxes)) < 2
               and time.monotonic() < deadline):
            time.sleep(0.01)
        time.sleep(0.2)
        a.cut()
        cut_at.append(time.monotonic() - started)

    cut_at: list[float] = []

    started = time.monotonic()
    cutter = threading.Thread(target=cut_when_busy)
    cutter.start()
    with ThreadPoolExecutor(4) as pool:
        episodes = list(pool.map(job, range(len(tasks))))
    cutter.join()
    ran_s = time.monotonic() - started

    assert a.errors == b.errors == []  # the stand-ins forwarded every byte until the cut
    # every episode ends exactly once, solved: one final episode per job, after its infra failures
    assert len(episodes) == len(tasks)
    for i, ep in enumerate(episodes):
        assert (ep.reward, ep.end_reason) == (1.0, "submitted"), (i, attempts[i])
        assert ep.timings["infra_attempts"] == len(attempts[i]) - 1, attempts[i]
        assert [r for _, r in attempts[i]].count("submitted") == 1 and attempts[i][-1][1] == "submitted"
    cut = [(i, host, reason) for i, tries in attempts.items() for host, reason in tries if reason != "submitted"]
    assert cut, f"no episode was running on the cut host: {attempts}"
    assert all(host == a.url for _, host, _ in cut), cut
    assert any(reason == "infra_error:host_down" for _, _, reason in cut), cut
    for i in {i for i, _, _ in cut}:  # retried on the other host
        assert attempts[i][-1][0] == b.url, attempts[i]
    wait_for_removals()  # episodes hand their containers to background removal; slots come back after it
    stats = fleet.stats()
    assert stats[a.url]["drained"] and stats[b.url]["drained"] is None and stats[b.url]["active"] == 0

    a.restore()  # the host answers again: re-admitted, and what could not be removed while it was down is removed
    deadline = time.monotonic() + 15
    while (fleet.stats()[a.url]["drained"] or fleet.stats()[a.url]["stranded"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fleet.stats()[a.url] | {"placed": 0} == {"active": 0, "placed": 0, "cap": 2, "drained": None,
                                                    "stranded": 0}
    wait_for_removals()
    assert labelled_containers(docker_client(), owner_pid=os.getpid()) == []
    print(f"fleet run: {len(tasks)} episodes in {ran_s:.1f} s, cut at {cut_at}, cut attempts {cut}")


def test_orphan_sweep_runs_per_host_and_leaves_other_users_alone(proxies, base_image):
    """`tasks sweep` with NORTH_DOCKER_HOSTS: a dead owner's container goes, another user's stays, a host that
    does not answer is skipped with a warning."""
    a, b = proxies
    client, run = docker_client(), uuid.uuid4().hex
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: its containers are orphans
    mine = {**owner_labels(dead.pid), SANDBOX_LABEL: "1", "north_lightning.test_run": run}
    other = {**mine, OWNER_UID_LABEL: str(os.getuid() + 4242)}  # another user's: its owner cannot be checked
    made = [client.containers.create(base_image, ["true"], labels=labels, network_mode="none")
            for labels in (mine, other)]
    try:
        a.cut()  # a host that does not answer is skipped; the sweep goes on with the others
        env = {**os.environ, HOSTS_ENV: f"{a.url},{b.url}", "PYTHONPATH": os.getcwd()}
        out = subprocess.run([sys.executable, "-m", "north_lightning", "tasks", "sweep"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert made[0].name in out.stdout and made[1].name not in out.stdout
        assert f"orphan sweep skipped Docker host {a.url}" in out.stderr
        left = labelled_summaries(client, f"north_lightning.test_run={run}")
        assert [c["Id"] for c in left] == [made[1].id]
    finally:
        for container in made:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already removed by the sweep
                pass


def test_sidecar_refuses_a_bad_docker_hosts_entry_at_construction():
    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar

    with pytest.raises(ValueError, match=r"docker_hosts\[1\]: 'http://node:2375' is not a Docker host URL"):
        VLLMSidecar(envs=[{"name": "toy", "tasks": "toy:train:2"}], docker_hosts=["unix:///x.sock", "http://node:2375"])
    sidecar = VLLMSidecar(envs=[{"name": "toy", "tasks": "toy:train:2"}],
                          docker_hosts=[{"url": "ssh://me@node", "max_sandboxes": 4}])
    assert sidecar.docker_hosts == [{"url": "ssh://me@node", "max_sandboxes": 4}]
