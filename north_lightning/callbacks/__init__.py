"""Trainer callbacks: `HFExport` (HF-format export), `vllm_sidecar` (async sampler + weight sync for RL), `progress`
(`ProgressLineCallback`: one live progress line per stage, readable in a CI log)."""

from north_lightning.callbacks.hf_export import HFExport

__all__ = ["HFExport"]
