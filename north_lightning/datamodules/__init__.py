"""Data for SFT and RL training. SFT: records (`formats/records.py`, made by `importers/`) → `filters` → harness
render (`formats/harnesses/`) → `tokenize` (assistant-only targets) → `mixture` (trainable-token shares) →
`packing`, all run once by `prepare` into memory-mapped shards (`shards.py` reads them) that
`sft.SFTDataModule` streams. RL: `rl.RLDataModule` streams the rollout batches the sampler writes to the spool
(`rl/spool.py`), packed by the same best-fit packer.
Kept import-free so importing a submodule does not pull in the others."""
