"""Server mode for sampler nodes: one real `vllm serve` (on the CPU) shared by the tests of this file.

- the OpenAI client `Policy`: an in-place weight reload through the server's RPC route makes the sampler match
  the trainer's new weights;
- `ServerPool` (what `VLLMSidecar(engine="servers")` uses), here over two URLs of that one server (the machine
  has 2 cores): calls from several rollout threads are spread over both, an export is written once and loaded
  by every server, and the logprobs afterwards are those of the new weights;
- episode affinity: every turn of an episode goes to one server (pool accounting per URL), groups spread over the
  servers, and a dead server's episodes move to a live one;
- `weight_transfer: nccl` against this server, started without `--weight-transfer-config`: refused, naming the
  flag (test_server_nccl.py has a server started with it).
"""

import threading

import pytest
import torch

from helpers import free_port
from north_lightning.envs.socket_proxy import SocketProxy
from sampler_servers import PROMPT, FilesStandInForNCCL, max_logprob_error, perturbed, tiny_cpu_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(model, its HF dir, base URL) of a running `vllm serve`; stopped, with its process group, at the end."""
    with tiny_cpu_server(tmp_path_factory.mktemp("server")) as served:
        yield served


def test_openai_server_policy_generates_and_reloads(server):
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import OpenAIServerPolicy

    model, model_dir, url = server
    policy = OpenAIServerPolicy(url, model_dir=model_dir)
    policy.reload(model_dir)  # whatever an earlier test loaded: back to the start weights
    err0, comp0 = max_logprob_error(model, policy, PROMPT)
    assert len(comp0.token_ids) == 8 and err0 < 1e-4
    new = perturbed(model, 1)
    policy.load_weights(to_hf_state_dict(new), version=1)
    err1, _ = max_logprob_error(new, policy, PROMPT)
    err_old, _ = max_logprob_error(model, policy, PROMPT)
    assert err1 < 1e-4 and err_old > 1e-3 and policy.policy_version == 1
    policy.close()


def test_server_pool_spreads_calls_and_exports_to_every_server(server, tmp_path):
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import ServerPool

    model, model_dir, url = server
    weights = tmp_path / "shared_weights"
    pool = ServerPool([url, url + "/v1"], model_dir=model_dir, weights_dir=weights, policy_version=0)
    pool.reload(model_dir)
    assert max_logprob_error(model, pool, PROMPT)[0] < 1e-4

    # rollout worker threads share the pool: both servers get calls
    results, errors = [], []

    def worker(k: int) -> None:
        try:
            for j in range(3):
                results.append(pool.generate([PROMPT], max_tokens=4, seed=10 * k + j)[0])
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 12
    assert sum(pool.calls) == 13 and min(pool.calls) >= 4, pool.calls  # spread, not all on one server
    assert pool.generated_tokens >= 12 * 4

    # an export: written once under the shared directory, loaded by every server, the old version deleted
    v1 = perturbed(model, 2)
    seconds = pool.load_weights(to_hf_state_dict(v1), version=1)
    assert seconds > 0 and pool.policy_version == 1 and [s.policy_version for s in pool.servers] == [1, 1]
    assert sorted(p.name for p in weights.iterdir()) == ["v1"]
    for _ in range(2):  # one call on each server: both hold the new weights
        assert max_logprob_error(v1, pool, PROMPT, seed=3)[0] < 1e-4
    v2 = perturbed(model, 3)
    pool.load_weights(to_hf_state_dict(v2), version=2)
    assert sorted(p.name for p in weights.iterdir()) == ["v2"]
    assert max(max_logprob_error(v2, pool, PROMPT)[0] for _ in range(2)) < 1e-4
    with pytest.raises(ValueError, match="must increase"):
        pool.load_weights(to_hf_state_dict(v2), version=2)
    assert pool.is_alive() and not pool.dead
    pool.close()
    assert not (weights / "v2").exists()


def test_server_pool_reports_a_dead_server_by_url_and_keeps_using_the_live_one(server):
    from north_lightning.rl.engines.server import ServerPool
    from north_lightning.rl.engines.inprocess import EngineDied

    model, model_dir, url = server
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    pool = ServerPool([url, dead], model_dir=model_dir, weights_dir=model_dir.parent / "w", timeout=30)
    with pytest.raises(EngineDied, match=dead):
        for _ in range(2):  # the second call goes to the other server
            pool.generate([PROMPT], max_tokens=2)
    assert list(pool.dead) == [dead] and pool.is_alive()
    pool.restart()  # the dead one does not answer /health: it stays out, the live one carries on
    assert list(pool.dead) == [dead]
    for _ in range(3):
        assert len(pool.generate([PROMPT], max_tokens=2)[0].token_ids) == 2
    pool.reload(model_dir)  # exports go to the live servers only
    pool.close()


class _Episode:
    """One episode's context (its `routing` route) driven turn by turn from the test thread, so the order of
    first calls across episodes is fixed; the conversation grows by the completion and an observation each turn."""

    def __init__(self, group: str, j: int) -> None:
        import contextvars

        from north_lightning.rl.engines.affinity import routing

        self.ctx, self.cm = contextvars.Context(), routing(group, j)
        self.route = self.ctx.run(self.cm.__enter__)
        self.prompt = list(PROMPT) + [40 + j]

    def turn(self, pool) -> None:
        comp = self.ctx.run(pool.generate, [self.prompt], max_tokens=3, seed=len(self.prompt))[0]
        self.prompt += comp.token_ids + [50, 60]  # the next observation's tokens

    def end(self) -> None:
        self.ctx.run(self.cm.__exit__, None, None, None)


def test_server_pool_keeps_episode_turns_on_one_server_and_spreads_groups(server, tmp_path):
    from north_lightning.rl.engines.server import ServerPool

    model, model_dir, url = server
    pool = ServerPool([url, url + "/v1"], model_dir=model_dir, weights_dir=tmp_path / "w")
    pool.reload(model_dir)
    episodes = [_Episode(g, j) for j in range(2) for g in "AB"]  # first calls: A0, B0, A1, B1
    for _ in range(3):
        for ep in episodes:
            ep.turn(pool)
    by = {(ep.route.group, ep.route.episode): ep.route.served_by for ep in episodes}
    assert all(len(s) == 3 and len(set(s)) == 1 for s in by.values()), by  # every turn on the episode's server
    assert by["A", 0][0] == by["A", 1][0] != by["B", 0][0] == by["B", 1][0], by  # a group together, groups apart
    assert pool.calls == [6, 6] and pool.affinity.active == [2, 2]
    for ep in episodes:
        ep.end()
    assert pool.affinity.running() == 0 and not pool.affinity.home and pool.affinity.active == [0, 0]
    pool.generate([PROMPT], max_tokens=2)  # a call outside any episode: least busy, not tracked
    assert sum(pool.calls) == 13 and pool.affinity.running() == 0
    pool.close()


def test_rollout_service_routes_each_episode_to_one_server(server, tmp_path):
    """The rollout service's worker threads (two groups of two episodes at once) put every turn of an episode on
    the same server through the pool; episodes are scripted multi-turn conversations (no Docker)."""
    from types import SimpleNamespace

    from north_lightning.rl.spool import RolloutSpool
    from north_lightning.rl.engines.affinity import current_route
    from north_lightning.rl.engines.server import ServerPool
    from north_lightning.rl.rollout import Episode, Segment
    from north_lightning.rl.env_specs import EnvSpec
    from north_lightning.rl.sampler import RolloutService

    model, model_dir, url = server
    pool = ServerPool([url, url + "/v1"], model_dir=model_dir, weights_dir=tmp_path / "w")
    pool.reload(model_dir)
    routes = []

    def scripted_episode(policy, harness, tokenizer, task, *, config, seed, env_name):
        routes.append(current_route())
        prompt, segments = list(PROMPT), []
        for turn in range(3):
            comp = policy.generate([prompt], max_tokens=3, seed=seed + turn)[0]
            segments += [Segment(list(prompt), None, False), Segment(comp.token_ids, comp.logprobs, True)]
            prompt += comp.token_ids + [50, 60]
        return Episode(task_id=task.task_id, env_name=env_name, reward=float(seed % 2), end_reason="submitted",
                       segments=segments, policy_versions=[policy.policy_version], steps=3)

    service = RolloutService(
        engine=pool, tokenizer=None, envs=[EnvSpec(name="scripted", tasks="unused")],
        tasks={"scripted": [SimpleNamespace(task_id="t0"), SimpleNamespace(task_id="t1")]},
        spool=RolloutSpool(tmp_path / "spool"), groups_per_step=2, group_size=2, mode="sync", num_workers=2,
        run_episode=scripted_episode)
    try:
        service.start(0)
        batch = service.spool.get(0, timeout=300)
    finally:
        service.stop(timeout=60)
    assert not service.errors and len(batch["groups"]) == 2
    assert len(routes) == 4 and {(r.group, r.episode) for r in routes} == {(g, j) for g in (0, 1) for j in (0, 1)}
    assert all(len(r.served_by) == 3 and len(set(r.served_by)) == 1 for r in routes), [r.served_by for r in routes]
    # both servers used (how many episodes each got depends on the threads' timing), 3 turns per episode
    assert sum(pool.calls) == 12 and min(pool.calls) >= 3 and all(c % 3 == 0 for c in pool.calls), pool.calls
    assert pool.affinity.running() == 0  # every episode ended and was forgotten
    pool.close()


def test_dead_servers_episodes_move_to_a_live_server(server, tmp_path):
    from north_lightning.rl.engines.server import ServerPool
    from north_lightning.rl.engines.inprocess import EngineDied

    model, model_dir, url = server
    fwd = SocketProxy(int(url.rsplit(":", 1)[1]), scheme="http").start()
    pool = ServerPool([fwd.url, url], model_dir=model_dir, weights_dir=tmp_path / "w", timeout=30)
    a0, b0, a1 = _Episode("A", 0), _Episode("B", 0), _Episode("A", 1)
    for ep in (a0, b0, a1):
        ep.turn(pool)
    assert [ep.route.served_by for ep in (a0, b0, a1)] == [[0], [1], [0]]
    fwd.close()  # server 0 is gone
    with pytest.raises(EngineDied, match=fwd.url):
        a0.turn(pool)  # the call in flight fails (the rollout service re-queues that group)
    assert list(pool.dead) == [fwd.url]
    a1.turn(pool)  # an episode of the dead server that was not calling moves on without an error
    a0.turn(pool)
    a2 = _Episode("A", 2)
    a2.turn(pool)  # a new episode of the group: on the live server
    assert a1.route.served_by == [0, 1] and a0.route.served_by == [0, 0, 1] and a2.route.served_by == [1]
    assert pool.affinity.moved == 2 and pool.affinity.active == [0, 4] and pool.affinity.home["A"] == 1
    for ep in (a0, b0, a1, a2):
        ep.end()
    assert pool.affinity.running() == 0
    pool.close()


def test_nccl_is_refused_by_a_server_started_without_the_flag(server, tmp_path, monkeypatch):
    """What `weight_transfer: nccl` checks before the first transfer, against the real server's `/server_info`:
    this one was started without `--weight-transfer-config`, so it is refused with the flag to add, and inside a
    pool that refusal reaches the trainer as an error naming the server and the flag, not a hang."""
    from north_lightning.rl.engines.server import ServerPool
    from north_lightning.rl.engines.weight_transfer import check_nccl_server, server_weight_info

    model, model_dir, url = server
    info = server_weight_info(url + "/v1")
    assert info.backend is None and info.workers == 1 and info.dtype == torch.float32
    with pytest.raises(RuntimeError, match=r"""started without --weight-transfer-config '\{"backend": "nccl"\}'"""):
        check_nccl_server(url, info)
    log = FilesStandInForNCCL.install(monkeypatch, model_dir)
    pool = ServerPool([url], model_dir=model_dir, weights_dir=tmp_path / "w", weight_transfer="nccl")
    with pytest.raises(RuntimeError, match=rf"weight reload failed on {url}.*started without --weight-transfer"):
        pool.load_weights({"x": torch.zeros(1)}, version=1)
    assert pool.policy_version == 0 and not pool.dead and log == []  # refused before any group formed
    pool.close()
