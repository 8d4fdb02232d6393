"""`weight_transfer: nccl` for real: the trainer's rank 0 on GPU 0 streams the weights into a `vllm serve` on GPU 1.

Needs two CUDA devices (NCCL refuses two ranks on one GPU) and the CUDA `vllm` package; with either missing the
tests skip, naming what is missing (CPU CI never selects them: marker `gpu`). What the CPU suite checks instead is
in tests/rl/test_server.py (preflight against real servers, the pool's NCCL bookkeeping with a named stand-in for
the broadcast) and tests/rl/test_server_pool.py (the sent metadata against vLLM's own checks).

The server runs in float32 with the Triton attention backend (the flash-attn backend has no float32), so its
logprobs can be compared with the CPU reference model: after a transfer they match the sent weights (|Δ| < 5e-2,
TF32 matmuls allowed) and no longer the old ones (a 0.05-sigma perturbation moves the tiny model's logprobs by
~1.6 nats at most, ~0.6 on average).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from helpers import free_port, require
from sampler_servers import max_logprob_error, perturbed, running_server, save_tiny_model

pytestmark = pytest.mark.gpu


def _second_gpu() -> str:
    """The server's device: the second of this process's visible GPUs (the trainer keeps cuda:0)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[1].strip() if visible else "1"


@pytest.fixture(scope="module")
def nccl_server(tmp_path_factory):
    """(CPU reference model, its HF dir, base URL) of a `vllm serve` on the second GPU that accepts NCCL
    weight transfers; stopped, with its process group, at the end."""
    require(torch.cuda.device_count() >= 2, "weight_transfer: nccl needs 2 CUDA devices (trainer and server)")
    require(importlib.util.find_spec("vllm") is not None, "the CUDA vllm package is not installed")
    tmp = tmp_path_factory.mktemp("nccl")
    model = save_tiny_model(tmp / "m")
    with running_server(tmp / "m", tmp / "server.log", start_timeout=300, env={"CUDA_VISIBLE_DEVICES": _second_gpu()},
                        extra_args=["--weight-transfer-config", '{"backend": "nccl"}',
                                    "--attention-backend", "TRITON_ATTN", "--kv-cache-memory-bytes",
                                    str(256 * 2**20), "--enforce-eager"]) as url:
        yield model, tmp / "m", url


def _max_error(model, policy) -> float:
    return max_logprob_error(model, policy)[0]


def test_broadcast_puts_the_trainers_weights_into_the_server(nccl_server):
    """State dicts (on the GPU and on the CPU) and a checkpoint directory, over one NCCL group; then the group is
    released on both sides and a new link joins on another port."""
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import OpenAIServerPolicy
    from north_lightning.rl.engines.weight_transfer import NCCLWeightBroadcaster

    model, model_dir, url = nccl_server
    policy = OpenAIServerPolicy(url, model_dir=model_dir)
    assert _max_error(model, policy) < 5e-2
    link = NCCLWeightBroadcaster(url, master_address="127.0.0.1", master_port=free_port())
    new1, new2 = perturbed(model, 1), perturbed(model, 2)
    link.send({k: v.cuda() for k, v in to_hf_state_dict(new1).items()})
    policy.reset_prefix_cache()
    assert link.info is not None and link.info.backend == "nccl" and link.info.workers == 1
    assert _max_error(new1, policy) < 5e-2 and _max_error(model, policy) > 0.5
    link.send(to_hf_state_dict(new2))  # the same group again, from CPU tensors
    policy.reset_prefix_cache()
    assert _max_error(new2, policy) < 5e-2 and _max_error(new1, policy) > 0.5
    link.send(model_dir)  # the start weights, read from safetensors here and streamed
    policy.reset_prefix_cache()
    assert _max_error(model, policy) < 5e-2
    link.close()  # releases the group on the server too, so a new trainer can join
    again = NCCLWeightBroadcaster(url, master_address="127.0.0.1", master_port=free_port())
    again.send(to_hf_state_dict(new1))
    policy.reset_prefix_cache()
    assert _max_error(new1, policy) < 5e-2
    again.close()
    policy.close()


def test_server_pool_exports_over_nccl(nccl_server, tmp_path):
    """What `VLLMSidecar(engine="servers", engine_kwargs={"weight_transfer": "nccl"})` does at each export."""
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import ServerPool

    model, model_dir, url = nccl_server
    pool = ServerPool([url], model_dir=model_dir, weights_dir=tmp_path / "w", weight_transfer="nccl",
                      nccl={"master_address": "127.0.0.1", "master_port": free_port()})
    try:
        new = perturbed(model, 3)
        seconds = pool.load_weights({k: v.cuda() for k, v in to_hf_state_dict(new).items()}, version=1)
        assert pool.policy_version == 1 and seconds > 0 and not (tmp_path / "w").exists()
        assert _max_error(new, pool) < 5e-2 and _max_error(model, pool) > 0.5
        pool.reload(model_dir)
        assert _max_error(model, pool) < 5e-2
    finally:
        pool.close()
