"""`RLModule`: CISPO policy-gradient training of a North model on packed multi-turn rollouts.

The module only does the learning: it recomputes the current policy's logprobs of the sampled tokens
(`model.token_logprobs(..., with_entropy=True)`, chunked head, never full logits), applies CISPO against the
sampler's logprobs with the per-token RLOO advantages the datamodule attached, and logs. Sampling, weight export
and the queue live in the sampler callback (`VLLMSidecar` / `SyncRollouts`), which tells the module the engine's
policy version and the step of the last export (`policy_version`, `last_export_step`).

Loss scaling: `cispo_loss` returns this micro-batch's share of the global-batch loss (divided by the global
trainable-token count `batch["num_tokens"]`). Lightning divides the returned loss by `accumulate_grad_batches`
and DDP averages gradients over ranks, so the module multiplies by both to keep the exact global objective.

Logprob mismatch after each export: on the first batch that holds rollouts sampled entirely by the newest
policy version, |log pi_train - log pi_sampler| over those rollouts' tokens is logged as
`rl/logprob_mismatch_mean|max`, with `rl/logprob_mismatch_lag_steps` = optimizer steps since that export. At
lag 0 (always under `SyncRollouts`) the trainer's weights are exactly the sampler's, so the value is the pure
numerical train/sampler mismatch (kernels, dtype); at lag > 0 (the asynchronous sampler's new rollouts reach the
trainer a few steps later) it also holds the policy's drift over those steps, which CISPO's importance weight
corrects anyway. Logged once per version (a version whose rollouts were all dropped as stale logs nothing).
"""

from __future__ import annotations

from typing import Any

import torch

from north_lightning.model.head import IGNORE_INDEX
from north_lightning.modules.sft import SFTModule
from north_lightning.rl.losses import CISPOConfig, cispo_loss



def log_sparse_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Log metrics that exist only on some steps (per-version mismatch, per-batch statistics whose keys vary:
    pass@1 per environment, end reasons, staleness buckets, export time) straight to the loggers at the current
    optimizer step. Why not `LightningModule.log`: once a key was logged there, Lightning keeps emitting it on every
    later step (as 0 after its reset), which reads as a real measurement (a 0 pass@1 of an environment that had no
    rollout in the batch). Loggers write on rank 0 only."""
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


class RLModule(SFTModule):
    """CISPO on packed rollouts (see the module docstring).

    Args (on top of `SFTModule`'s model/optimizer arguments):
        eps_low, eps_high: CISPO weight clip `[1 - eps_low, 1 + eps_high]` (defaults: no lower clip, at most 5).
        moe_aux_loss: add the router's load-balancing loss (coefficient in the model config).
        max_logprob_diff: leave tokens with |log pi_theta - log pi_sampler| above this out of the loss (off by
            default; counted as `rl/masked_frac`).
        router_replay: route every token through the experts the sampler chose (the batch's `routed_experts`,
            see `model/moe.py` for the gradient treatment); a batch without them is an error. Off by default.
    """

    def __init__(self, model: str | dict[str, Any] = "tiny", init_from: str | None = None,
                 config_overrides: dict[str, Any] | None = None, lr: float = 1e-5, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8, warmup_steps: int = 0,
                 min_lr_ratio: float = 1.0, eps_low: float = 1.0, eps_high: float = 4.0,
                 moe_aux_loss: bool = True, max_logprob_diff: float | None = None, router_replay: bool = False) -> None:
        super().__init__(model=model, init_from=init_from, config_overrides=config_overrides, lr=lr,
                         weight_decay=weight_decay, betas=betas, eps=eps, warmup_steps=max(warmup_steps, 1),
                         min_lr_ratio=min_lr_ratio)
        self.cispo = CISPOConfig(eps_low, eps_high)
        self.policy_version = 0  # set by the sampler callback at each export
        self.last_export_step = 0
        self.mismatch_logged_version = -1  # newest policy version whose mismatch was logged
        self.last_loss_share: torch.Tensor | None = None  # the last micro-batch's share of the global loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        targets_BS = batch["targets"]
        logp_BS, ent_BS = self.model.token_logprobs(batch["input_ids"], targets_BS, position_ids=batch["position_ids"],
                                                    document_ids=batch["document_ids"], with_entropy=True,
                                                    routed_experts=self._routed_experts(batch))
        mask_BS = targets_BS != IGNORE_INDEX
        loss, m = cispo_loss(logp_BS, batch["sampler_logprobs"], batch["advantages"], mask_BS, batch["num_tokens"],
                             eps_low=self.cispo.eps_low, eps_high=self.cispo.eps_high, entropy_BS=ent_BS,
                             max_logprob_diff=self.hparams.max_logprob_diff)
        self.last_loss_share = loss.detach()
        trainer = self._trainer
        scale = (trainer.accumulate_grad_batches * trainer.world_size) if trainer is not None else 1
        total = loss * scale
        if self.hparams.moe_aux_loss:
            total = total + self.model.moe_aux_loss()
        B = batch["input_ids"].shape[0]
        self.log("train/loss", loss.detach() * scale, prog_bar=True, batch_size=B)
        for key in ("clip_frac_low", "clip_frac_high", "ratio_mean", "entropy", "logprob_diff_mean", "masked_frac"):
            if key in m:
                self.log(f"rl/{key}", m[key], batch_size=B)
        self.log("rl/logprob_diff_max", m["logprob_diff_max"], batch_size=B, reduce_fx="max")
        self._log_mismatch(batch, logp_BS.detach(), mask_BS)
        self._log_version_lag(batch, mask_BS)
        meta = batch.get("meta") or {}
        self.log_sparse({key: float(value) for key, value in (meta.get("stats") or {}).items()})
        self.log("rl/policy_version", float(self.policy_version), batch_size=B)
        return total

    def _routed_experts(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if not self.hparams.router_replay:
            return None
        if batch.get("routed_experts") is None:
            raise ValueError("model.router_replay=true but the rollout batch carries no routed_experts: the engine "
                             "must return the sampler's routing (vLLM enable_return_routed_experts, Model Runner V2)")
        return batch["routed_experts"]

    def _log_mismatch(self, batch: dict[str, Any], logp_BS: torch.Tensor, mask_BS: torch.Tensor) -> None:
        if self._trainer is None or self.mismatch_logged_version >= self.policy_version:
            return
        fresh_BS = mask_BS & (batch["versions"] == self.policy_version)
        diff = (logp_BS - batch["sampler_logprobs"]).abs()[fresh_BS]
        # [sum, count, max] over all ranks, so every rank decides alike and the mean is token-weighted
        stats = torch.stack([diff.sum(), torch.tensor(float(diff.numel()), device=diff.device),
                             diff.max() if diff.numel() else torch.zeros((), device=diff.device)])
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            total = stats[:2].clone()
            torch.distributed.all_reduce(total)
            top = stats[2:].clone()
            torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
            stats = torch.cat([total, top])
        if float(stats[1]) == 0:
            return
        self.mismatch_logged_version = self.policy_version
        self.log_sparse({"rl/logprob_mismatch_mean": float(stats[0] / stats[1]),
                         "rl/logprob_mismatch_max": float(stats[2]),
                         "rl/logprob_mismatch_lag_steps": float(self.trainer.global_step - self.last_export_step)})

    def _log_version_lag(self, batch: dict[str, Any], mask_BS: torch.Tensor) -> None:
        """How many exports behind the trainer each trained token's policy is (`token_versions`: per token, so a
        turn generated across an in-flight update counts each part at its own version): mean and max, the share
        of tokens at each lag (`rl/version_lag/<k>`, a histogram any logger can plot) and, where the logger has
        one (TensorBoard), a real histogram."""
        versions_BS = batch.get("token_versions")
        if versions_BS is None:
            return
        lag = (self.policy_version - versions_BS[mask_BS & (versions_BS >= 0)]).float()
        if not lag.numel():
            return
        B = batch["input_ids"].shape[0]
        self.log("rl/version_lag_mean", lag.mean(), batch_size=B)
        self.log("rl/version_lag_max", lag.max(), batch_size=B, reduce_fx="max")
        values, counts = torch.unique(lag, return_counts=True)
        self.log_sparse({f"rl/version_lag/{int(v)}": float(c) / lag.numel() for v, c in zip(values, counts)})
        if self._trainer is not None and self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                add_histogram = getattr(getattr(logger, "experiment", None), "add_histogram", None)
                if callable(add_histogram):
                    add_histogram("rl/version_lag", lag.cpu(), self.trainer.global_step)

    def log_sparse(self, metrics: dict[str, float]) -> None:
        """See `log_sparse_metrics`."""
        if self._trainer is not None:
            log_sparse_metrics(self.trainer, metrics)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rl_state"] = {"policy_version": self.policy_version, "last_export_step": self.last_export_step,
                                  "mismatch_logged_version": self.mismatch_logged_version}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("rl_state") or {}
        self.policy_version = int(state.get("policy_version", 0))
        self.last_export_step = int(state.get("last_export_step", 0))
        self.mismatch_logged_version = int(state.get("mismatch_logged_version", -1))
