"""Multi-process worker for tests/scale/test_streamed_export.py (run as a script).

    python export_worker.py WORLD EP BUCKET_MB OUT_DIR

A ~580 MB (fp32) wide North model, the same on every rank (seeded), sharded with FSDP2 + EP over WORLD gloo
ranks, streamed bucket by bucket (`model/gather.py: write_hf_streaming`) into OUT_DIR/hf by rank 0. Every rank
writes OUT_DIR/rank<r>.json: the gather's peak of full-tensor bytes alive, its bucket count, this rank's shard
bytes; rank 0 adds the trainer's (sharded) logprobs of a fixed sequence, computed after the export.
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

SEQUENCE = [1, 17, 240, 3001, 58, 77, 1024, 9, 400, 4000, 12, 33]
OVERRIDES = dict(hidden_size=1024, num_hidden_layers=6, num_experts=8, expert_intermediate_size=1024, head_dim=64,
                 num_attention_heads=16, num_key_value_heads=4, dense_intermediate_size=2048,
                 router_aux_loss_coef=0.0, experts_backend="grouped")


def wide_model():
    from north_lightning.model import NorthConfig, NorthForCausalLM

    torch.manual_seed(0)
    return NorthForCausalLM(NorthConfig.preset("tiny", **OVERRIDES))


def run_rank(rank: int, world: int, ep: int, bucket_mb: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from north_lightning.model.gather import GatherStats, write_hf_streaming
        from north_lightning.model.parallelize import parallelize_north

        model = parallelize_north(wide_model(), ep=ep, activation_checkpointing=False, param_dtype=None)
        shard = sum(p.to_local().numel() * p.element_size() if hasattr(p, "to_local") else p.numel() * p.element_size()
                    for p in model.parameters())
        stats = GatherStats(bucket_mb * 2**20)
        write_hf_streaming(model, model.config, Path(out) / "hf", bucket_bytes=bucket_mb * 2**20,
                           dtype=torch.float32, stats=stats)
        result = {"peak_bytes": stats.peak_bytes, "alive_after": stats.alive_bytes, "buckets": stats.buckets,
                  "tensors": stats.tensors, "shard_bytes": shard}
        seq = torch.tensor([SEQUENCE])
        targets = torch.full_like(seq, -100)
        targets[:, :-1] = seq[:, 1:]
        with torch.no_grad():
            logp, _ = model.token_logprobs(seq, targets)
        result["trainer_logprobs"] = logp[0, :-1].tolist()
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    world, ep, bucket_mb, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(run_rank, args=(world, ep, bucket_mb, out, port), nprocs=world, join=True)
