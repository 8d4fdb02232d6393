"""Multi-process worker for tests/scale/test_parallel.py (run as a script: spawn children re-import it by path).

    python parallel_worker.py SCENARIO WORLD OUT_JSON [EP] [PARAM_DTYPE]

Scenarios (gloo, CPU):
  train   : the tiny model, FSDP2 (+ EP when EP > 1) + activation checkpointing, 3 AdamW steps; each rank trains
            on its slice of the global batch; writes the global losses per step and exports the trained model
            to HF (OUT_JSON's folder / hf).
  load    : a meta-built model, sharded, then filled from an HF directory with each rank reading only its
            slices (north_lightning.model.sharded_load); writes the deviation from the checkpoint.
  moe     : one MoE block, experts split over EP ranks (the rest FSDP-style over dp_mod_ep); writes every
            rank's output rows and the expert gradients gathered to full tensors.
`reference(...)` computes the same numbers in one process, without any parallelism.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS, ROWS, SEQ = 3, 4, 48


# Adam divides by sqrt(v) + eps: with the default eps (1e-8) a weight whose gradient is ~1e-8 moves by a fraction of
# lr that depends on that gradient's last bits, so float-noise differences of a sharded sum (rank order) become
# 1e-4-sized weight differences. A larger eps keeps the comparison about the parallelism, not about noise.
ADAM_EPS = 1e-6


def tiny_config():
    from north_lightning.model import NorthConfig

    # aux loss off: it depends on per-rank routing statistics, which are not additive over ranks
    return NorthConfig.preset("tiny", num_hidden_layers=3, router_aux_loss_coef=0.0, experts_backend="grouped")


def global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, 4096, (ROWS, SEQ), generator=gen)
    doc = torch.zeros(ROWS, SEQ, dtype=torch.long)
    doc[:, SEQ // 2:] = 1  # two packed documents per row
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    targets[:, SEQ // 2 - 1] = -100  # no prediction across the document boundary
    return {"input_ids": ids, "document_ids": doc, "targets": targets}


def loss_fn(model, batch, n_global: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of NLL over local tokens / global token count (x world for FSDP's gradient averaging)."""
    logp, _ = model.token_logprobs(batch["input_ids"], batch["targets"], document_ids=batch["document_ids"])
    nll_sum = -logp.sum()
    world = dist.get_world_size() if dist.is_initialized() else 1
    return nll_sum * world / n_global, nll_sum.detach()


def fresh_model():
    from north_lightning.model import NorthForCausalLM

    torch.manual_seed(0)
    return NorthForCausalLM(tiny_config())


def reference(scenario: str) -> dict:
    """One process, no parallelism: the numbers every parallel run must reproduce."""
    torch.set_num_threads(1)
    if scenario == "train":
        model, batch = fresh_model(), global_batch()
        n = int((batch["targets"] != -100).sum())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=ADAM_EPS)
        losses = []
        for _ in range(STEPS):
            loss, nll = loss_fn(model, batch, n)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(nll) / n)
        return {"losses": losses, "state": model.state_dict()}
    block, x_TD, g_TD = moe_inputs()
    out = block(x_TD)
    (out * g_TD).sum().backward()
    return {"out": out.detach(), "gate_up": block.experts.gate_up_proj.grad, "down": block.experts.down_proj.grad}


def moe_inputs():
    from north_lightning.model.moe import MoEBlock

    torch.manual_seed(0)
    cfg = tiny_config()
    block = MoEBlock(cfg)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.05)
    gen = torch.Generator().manual_seed(7)
    x_TD = torch.randn(64, cfg.hidden_size, generator=gen)
    g_TD = torch.randn(64, cfg.hidden_size, generator=gen)
    return block, x_TD, g_TD


def run_rank(rank: int, world: int, scenario: str, out: str, ep: int, param_dtype: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        runners = {"train": lambda: train(rank, world, ep, param_dtype, Path(out)),
                   "moe": lambda: moe(rank, world, ep), "load": lambda: sharded_load(ep, Path(out))}
        result = runners[scenario]()
        if rank == 0:
            Path(out).write_text(json.dumps(result))
        dist.barrier()  # leave together: a rank tearing gloo down while its peer is mid-collective aborts
    finally:
        dist.destroy_process_group()


def train(rank: int, world: int, ep: int, param_dtype: str, out: Path) -> dict:
    from north_lightning.model.parallelize import export_hf, parallelize_north

    model = parallelize_north(fresh_model(), ep=ep, activation_checkpointing=True,
                              param_dtype=None if param_dtype == "none" else param_dtype)
    batch = global_batch()
    n = int((batch["targets"] != -100).sum())
    rows = ROWS // world
    local = {k: v[rank * rows:(rank + 1) * rows] for k, v in batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=ADAM_EPS)
    losses = []
    for _ in range(STEPS):
        loss, nll = loss_fn(model, local, n)
        loss.backward()
        opt.step()
        opt.zero_grad()
        dist.all_reduce(nll)
        losses.append(float(nll) / n)
    export_hf(model, out.parent / "hf")
    return {"losses": losses}


def sharded_load(ep: int, out: Path) -> dict:
    """Meta-built model, sharded (FSDP2 + EP), materialised empty, filled rank by rank from the HF directory
    OUT's folder / hf_src; returns the max deviation of the gathered weights from the checkpoint."""
    from north_lightning.model import NorthForCausalLM
    from north_lightning.model.gather import full_state_dict
    from north_lightning.model.parallelize import parallelize_north
    from north_lightning.model.sharded_load import load_hf_sharded

    with torch.device("meta"):
        model = NorthForCausalLM(tiny_config())
    parallelize_north(model, ep=ep, param_dtype=None)
    model.to_empty(device="cpu")
    load_hf_sharded(model, out.parent / "hf_src")
    loaded = full_state_dict(model)  # gathered on rank 0 only
    if dist.get_rank() != 0:
        return {}
    reference = NorthForCausalLM.from_pretrained(out.parent / "hf_src").state_dict()
    assert loaded.keys() == reference.keys(), sorted(set(loaded) ^ set(reference))
    return {"max_abs_diff": max(float((loaded[k] - reference[k]).abs().max()) for k in reference)}


def moe(rank: int, world: int, ep: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    from north_lightning.model.expert_parallel import ExpertParallelExperts

    block, x_TD, g_TD = moe_inputs()
    mesh = init_device_mesh("cpu", (world // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))
    block.experts = ExpertParallelExperts(block.experts, mesh, "grouped", world, torch.device("cpu"))
    rows = x_TD.shape[0] // world
    sl = slice(rank * rows, (rank + 1) * rows)
    out = block(x_TD[sl])
    (out * g_TD[sl]).sum().backward()
    outs = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(outs, out.detach().contiguous())
    # gradients come scaled by 1/world (FSDP-style averaging); undo it to compare with the summed reference
    grads = {name: getattr(block.experts, name).grad.full_tensor() * world for name in ("gate_up_proj", "down_proj")}
    return {"out": torch.cat(outs).tolist(), "gate_up": grads["gate_up_proj"].tolist(),
            "down": grads["down_proj"].tolist()}


if __name__ == "__main__":
    scenario, world, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ep = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    param_dtype = sys.argv[5] if len(sys.argv) > 5 else "none"
    with socket.socket() as sock:  # a free port for this run's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(run_rank, args=(world, scenario, out, ep, param_dtype, port), nprocs=world, join=True)
