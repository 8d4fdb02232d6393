"""Trainer callbacks: `HFExport` (HF-format export), `vllm_sidecar` (async sampler + weight sync for RL)."""

from north_lightning.callbacks.hf_export import HFExport

__all__ = ["HFExport"]
