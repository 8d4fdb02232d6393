"""`VLLMSidecar(engine="servers")` without a server: where the sampler URLs come from, and a pool whose every
server is gone fails with their URLs (the real-server behaviour is in test_server.py)."""

import socket

import pytest


def test_sampler_urls_from_kwargs_or_environment(monkeypatch):
    from north_lightning.callbacks.vllm_sidecar import sampler_urls

    monkeypatch.delenv("NORTH_SAMPLER_URLS", raising=False)
    with pytest.raises(ValueError, match=r"engine_kwargs.urls.*NORTH_SAMPLER_URLS"):
        sampler_urls(None)
    monkeypatch.setenv("NORTH_SAMPLER_URLS", "http://a:8000/v1, http://b:8000/v1,")
    assert sampler_urls(None) == ["http://a:8000/v1", "http://b:8000/v1"]
    assert sampler_urls(["http://c:1"]) == ["http://c:1"]  # the config wins over the environment


def test_sidecar_rejects_an_unknown_engine_and_kwargs_that_do_not_apply():
    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar

    with pytest.raises(ValueError, match="servers"):
        VLLMSidecar(envs=[{"name": "t", "tasks": "toy:train:1"}], engine="remote")
    with pytest.raises(ValueError, match=r"\['max_model_len'\] do not apply to engine: servers"):
        VLLMSidecar(envs=[{"name": "t", "tasks": "toy:train:1"}], engine="servers",
                    engine_kwargs={"urls": ["http://a:1"], "max_model_len": 1024})


def test_pool_with_no_live_server_names_every_dead_one(tmp_path):
    from north_lightning.rl.engine_server import ServerPool
    from north_lightning.rl.engines import EngineDied

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
    pool = ServerPool(urls, model_dir=tmp_path, weights_dir=tmp_path / "w", timeout=5)
    for _ in range(2):
        with pytest.raises(EngineDied, match="unreachable"):
            pool.generate([[1, 2]], max_tokens=2)
    assert not pool.is_alive()
    with pytest.raises(EngineDied) as info:
        pool.restart()
    assert all(u.removesuffix("/v1") in str(info.value) for u in urls)
    with pytest.raises(EngineDied, match="no sampler server left"):
        pool.generate([[1, 2]], max_tokens=2)
