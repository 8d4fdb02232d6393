"""Lightning worker for tests/scale/test_rl_rank_equality.py (a script: Lightning re-launches it once per extra
device with LOCAL_RANK set).

    python rl_equality_worker.py RUN_DIR DEVICES EP INIT_HF

One RL optimizer step of the tiny RLModule (fp32, FSDP2 (+ EP), accumulate_grad_batches=2) on one fixed global
rollout batch read from RUN_DIR/rollouts through the real RLDataModule, so the rank split (group j -> rank j %
world), the global `num_tokens`, Lightning's division by the accumulation count, the module's x(accumulate x world)
scaling and FSDP2's gradient averaging are all the production ones. Rank 0 writes RUN_DIR/result_<DEVICES>.json:
the global loss (sum over micro-batches and ranks of each micro-batch's share) and every parameter's full gradient
at `on_before_optimizer_step` (after the last micro-batch's backward and the cross-rank reduction).

The MoE load-balancing loss is off (router_aux_loss_coef=0): it is computed from each forward's own routing
statistics (per micro-batch and per rank, padding included), which are not additive over ranks, so it is not
part of the claim that the objective is split-invariant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from north_lightning.datamodules.rl import RLDataModule
from north_lightning.modules.rl import RLModule
from north_lightning.modules.strategy import NorthParallelStrategy

MICRO_BATCHES, ROW_TOKENS, GROUPS, GROUP_SIZE = 2, 96, 4, 3
OVERRIDES = {"num_hidden_layers": 2, "router_aux_loss_coef": 0.0, "experts_backend": "grouped"}


def global_rollout_batch() -> dict:
    """4 groups x 3 rollouts of different lengths: a prompt segment (not trained) and 1-2 generated segments with
    sampler logprobs near the model's (so CISPO weights are not all clipped), rewards that differ within groups."""
    gen = torch.Generator().manual_seed(2024)
    groups = []
    for g in range(GROUPS):
        rollouts = []
        for j in range(GROUP_SIZE):
            prompt = torch.randint(3, 4096, (int(torch.randint(4, 12, (1,), generator=gen)),), generator=gen)
            segments = [{"token_ids": prompt.tolist(), "logprobs": None, "trainable": False}]
            for _ in range(1 + (g + j) % 2):
                n = int(torch.randint(3, 20, (1,), generator=gen))
                tokens = torch.randint(3, 4096, (n,), generator=gen)
                logprobs = -8.3 + 0.5 * torch.randn(n, generator=gen)
                segments.append({"token_ids": tokens.tolist(), "logprobs": logprobs.tolist(), "trainable": True})
            rollouts.append({"task_id": f"t{g}", "env": "toy", "reward": float((g + 2 * j) % 3 == 0) + 0.1 * j,
                             "end_reason": "done", "steps": 1, "versions": [0], "segments": segments})
        groups.append({"group_id": g, "task_id": f"t{g}", "env": "toy", "staleness": 0, "rollouts": rollouts})
    return {"index": 0, "policy_version": 0, "sampler_run": "equality-test", "groups": groups}


class GradientRecorder(L.Callback):
    """Each micro-batch's loss share (summed over ranks at the end) and the reduced full gradients."""

    def __init__(self) -> None:
        self.loss_share = 0.0
        self.grads: dict[str, list] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss_share += float(pl_module.last_loss_share)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for name, p in pl_module.model.named_parameters():
            grad = p.grad
            if grad is None:
                continue
            full = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
            self.grads[name] = full.detach().cpu().reshape(-1).tolist()


def main() -> None:
    run_dir, devices, ep, init_hf = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = RLModule(init_from=init_hf, config_overrides=OVERRIDES, lr=1e-3, warmup_steps=1)
    data = RLDataModule(spool_dir=str(run_dir / "rollouts"), row_tokens=ROW_TOKENS, micro_batches=MICRO_BATCHES,
                        timeout_s=60)
    recorder = GradientRecorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, max_steps=1, precision="32-true", accumulate_grad_batches=MICRO_BATCHES,
        strategy=NorthParallelStrategy(expert_parallel_size=ep, activation_checkpointing=False, param_dtype=None,
                                       reduce_dtype="float32"),
        default_root_dir=run_dir, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, use_distributed_sampler=False, num_sanity_val_steps=0, callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)
    total = torch.tensor([recorder.loss_share], dtype=torch.float64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    if trainer.global_rank == 0:
        (run_dir / f"result_{devices}.json").write_text(json.dumps({"loss": float(total), "grads": recorder.grads}))


if __name__ == "__main__":
    main()
