"""Data for SFT and RL training. SFT: records (`formats/records.py`) → `filters` → harness render
(`formats/harnesses/`) → `tokenize` (assistant-only targets) → `mixture` (trainable-token shares) → `packing` →
`sft.SFTDataModule`. RL: `rl.RLDataModule` streams the rollout batches the sampler writes to the spool
(`rl/spool.py`). Kept import-free so importing a submodule does not pull in the others."""
