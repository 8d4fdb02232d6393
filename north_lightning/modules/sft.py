"""`SFTModule`: supervised fine-tuning of a North model on packed batches with a mask of trainable tokens.

Loss normalisation (why it is not `loss.mean()`): the objective is the mean negative log-likelihood over every
trainable token of an optimizer step, whatever the micro-batch and data-parallel split. Each micro-batch
returns `nll_sum * A * W / N`, where A is `accumulate_grad_batches` (Lightning divides the returned loss by A),
W the data-parallel world size (DDP averages gradients over ranks) and N the trainable tokens of the whole
optimizer step, summed over ranks. The datamodule provides this rank's window count in
`batch["window_trainable_tokens"]` (see `datamodules/jsonl.py`); without that key N is estimated as the
micro-batch's own count times A (exact when micro-batches hold equal numbers of trainable tokens).

The router's load-balancing loss (`model.moe_aux_loss()`, coefficient in `NorthConfig.router_aux_loss_coef`)
is added per micro-batch. RNG states go into checkpoints so a resumed run continues bit-identically on CPU.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from north_lightning.model import NorthForCausalLM
from north_lightning.model.config import build_north_config
from north_lightning.model.head import IGNORE_INDEX, cross_entropy, load_liger_loss_class



def masked_nll_sum(model: NorthForCausalLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of -log p(target) over the trainable positions of a packed batch, and their number.

    The output head runs only on the trainable positions (assistant tokens are often a third of an agent
    trajectory, the rest being prompts and tool outputs), in chunks, so neither full logits nor the logits of
    untrained positions are ever computed. `NorthConfig.loss_impl` picks the head: our chunked fp32 one or
    Liger's fused linear cross-entropy (CUDA)."""
    targets_BS = batch["targets"]
    hidden_BSD = model.hidden_states(batch["input_ids"], position_ids=batch.get("position_ids"),
                                     document_ids=batch.get("document_ids"))
    trainable_BS = targets_BS != IGNORE_INDEX
    hidden_1ND = hidden_BSD[trainable_BS][None]
    nll_sum = cross_entropy(hidden_1ND, model.output_weight(), targets_BS[trainable_BS][None],
                            scale=model.config.logit_scale, chunk_size=model.config.head_chunk_size,
                            reduction="sum", impl=model.config.loss_impl)
    return nll_sum, trainable_BS.sum()


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1 over `warmup_steps`, then cosine down to `min_lr_ratio`
    at `total_steps` (constant afterwards)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SFTModule(L.LightningModule):
    """Masked next-token training of `NorthForCausalLM` (see the module docstring for the loss).

    Args:
        model: preset name (`tiny`, `north_mini_code_30b`) or a dict of `NorthConfig` fields (+ `preset`).
        init_from: HF directory (config.json + safetensors) to start from; overrides `model`.
        config_overrides: `NorthConfig` fields applied on top (backends, `loss_impl`, router aux-loss coefficient, ...).
        lr, weight_decay, betas, eps: AdamW. Weight decay applies to matrices only (not norms).
        warmup_steps, min_lr_ratio: linear warmup then cosine decay to `lr * min_lr_ratio` at the trainer's
            last step (`trainer.estimated_stepping_batches`).
    """

    def __init__(self, model: str | dict[str, Any] = "tiny", init_from: str | None = None,
                 config_overrides: dict[str, Any] | None = None, lr: float = 3e-4, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, warmup_steps: int = 10,
                 min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = build_north_config(model, init_from, config_overrides)
        if self.config.loss_impl == "liger":
            load_liger_loss_class()  # a run asking for Liger without it fails here, before any data or model
        self.model: NorthForCausalLM | None = None
        self._step_started_at: float | None = None

    def configure_model(self) -> None:
        """Build (or load) the network here, not in `__init__`, so strategies can wrap/shard it at creation."""
        if self.model is not None:
            return
        if self.hparams.init_from is not None:
            self.model = NorthForCausalLM.from_pretrained(self.hparams.init_from, **(self.hparams.config_overrides or {}))
        else:
            self.model = NorthForCausalLM(self.config)

    # ---- loss ---------------------------------------------------------------------------------------------
    def _nll_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_nll_sum(self.model, batch)

    def _global_normaliser(self, batch: dict[str, torch.Tensor], n_local: torch.Tensor) -> torch.Tensor:
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        window = batch.get("window_trainable_tokens")
        tokens = window.to(torch.float32) if window is not None else n_local.to(torch.float32) * accumulate
        if self._trainer is not None and self.trainer.world_size > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum")
        return tokens.clamp_min(1.0) / (accumulate * (self.trainer.world_size if self._trainer is not None else 1))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll_sum, n_local = self._nll_sum(batch)
        ce = nll_sum / self._global_normaliser(batch, n_local)
        aux = self.model.moe_aux_loss()
        B = batch["input_ids"].shape[0]
        self.log("train/loss", (nll_sum / n_local.clamp_min(1)).detach(), prog_bar=True, batch_size=B)
        self.log("moe/aux_loss", aux.detach(), batch_size=B)
        load_LE = self.model.expert_load()
        if load_LE.numel():
            cv = (load_LE.std(dim=-1, unbiased=False) / load_LE.mean(dim=-1).clamp_min(1e-9)).mean()
            self.log("moe/expert_load_cv", cv, batch_size=B)
        self.log("train/trainable_tokens", n_local.to(torch.float32), batch_size=B, reduce_fx="sum")
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=B)
        return ce + aux

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll_sum, n = self._nll_sum(batch)
        self.log("val/loss", nll_sum / n.clamp_min(1), prog_bar=True, batch_size=batch["input_ids"].shape[0],
                 sync_dist=True)

    # ---- throughput -------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self._step_started_at is None:
            self._step_started_at = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Tokens per second over the wall time since the previous batch ended (data loading included)."""
        now = time.perf_counter()
        elapsed = max(now - self._step_started_at, 1e-9)
        self._step_started_at = now
        self.log("train/tokens_per_s", batch["input_ids"].numel() / elapsed, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
        )
        total = int(self.trainer.estimated_stepping_batches)
        if total <= 0 or total == math.inf:
            raise ValueError("SFTModule needs a finite number of steps: set trainer.max_steps (or max_epochs with a "
                             "sized dataloader) so the cosine schedule knows where it ends")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- exact resume -------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Tensors and plain Python values only, so the checkpoint loads with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        checkpoint["north_config"] = self.config.to_hf_dict()
        # Recorded so `convert ckpt-to-hf` can copy the tokenizer the model was trained with.
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        tokenizer_dir = getattr(datamodule, "tokenizer_path", None)
        if tokenizer_dir is not None:
            checkpoint["tokenizer_dir"] = str(Path(tokenizer_dir).resolve())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(states["python"])
        if states.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
