"""`HFExport`: write the trained model as an HF directory (config.json + safetensors + tokenizer) that
transformers and vLLM load directly, at the end of training and optionally every N optimizer steps.

Why a callback rather than a post-processing step: the export then always matches the run that produced it
(same config, same tokenizer), and RL / evaluation stages can start from `dirpath` without a conversion.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L


class HFExport(L.Callback):
    """Export `pl_module.model` (a `NorthForCausalLM`) with `save_pretrained`.

    Args:
        dirpath: output directory; default `<trainer.default_root_dir>/hf`. With `every_n_steps`, intermediate
            exports go to `<dirpath>/step_<N>` and the final one to `dirpath` itself.
        tokenizer: tokenizer directory copied alongside; default: the datamodule's `tokenizer_path` if it has one.
        every_n_steps: also export every N optimizer steps (0 = only at the end).
    """

    def __init__(self, dirpath: str | None = None, tokenizer: str | None = None, every_n_steps: int = 0) -> None:
        super().__init__()
        self.dirpath, self.tokenizer, self.every_n_steps = dirpath, tokenizer, every_n_steps
        self.last_export: Path | None = None
        self._last_step = 0

    def _out_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "hf"

    def _tokenizer_dir(self, trainer: L.Trainer) -> str | None:
        if self.tokenizer:
            return self.tokenizer
        return getattr(trainer.datamodule, "tokenizer_path", None) if trainer.datamodule is not None else None

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, out: Path) -> None:
        model = getattr(pl_module, "model", None)
        if model is None or not hasattr(model, "save_pretrained"):
            raise TypeError(f"HFExport: {type(pl_module).__name__}.model has no save_pretrained (need NorthForCausalLM)")
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in model.parameters()):
            # Sharded (FSDP2 / EP): gathering the full weights is collective, so every rank takes part.
            from north_lightning.model.parallelize import export_hf

            export_hf(model, out, tokenizer_dir=self._tokenizer_dir(trainer))
            if trainer.is_global_zero:
                print(f"HF export written to {out.resolve()}")  # noqa: T201
        elif trainer.is_global_zero:
            model.save_pretrained(out, tokenizer_dir=self._tokenizer_dir(trainer))
            print(f"HF export written to {out.resolve()}")  # noqa: T201 - the one line a user looks for
        trainer.strategy.barrier("hf_export")
        self.last_export = out

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps; unchanged across the micro-batches of one step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.export(trainer, pl_module, self._out_dir(trainer) / f"step_{step}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module, self._out_dir(trainer))
