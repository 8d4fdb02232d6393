"""Data for SFT and RL. SFT: `records` (canonical trajectories) → `filters` → `harnesses` (render) →
`tokenize` (assistant-only targets) → `mixture` (trainable-token shares) → `packing` → `sft.SFTDataModule`.
Kept import-free so `north_lightning.datamodules.harnesses` (used by RL rollouts) does not pull in Lightning."""
