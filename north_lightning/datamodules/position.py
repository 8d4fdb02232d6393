"""Prefetch-proof data position, shared by the SFT datamodules.

Lightning fetches batch k+1 before it trains on batch k, so a position counted in the dataloader runs one batch
ahead of what was trained. The streams tag each batch with its index instead, and the datamodule records it in
`on_before_batch_transfer`, which runs right before the batch reaches the training step.
"""

from __future__ import annotations

from typing import Any


def record_batch_position(datamodule: Any, batch: Any) -> Any:
    """Strip the stream's `batch_index` tag from `batch`; while training, set `datamodule.consumed_batches`."""
    if isinstance(batch, dict) and "batch_index" in batch:
        batch = dict(batch)
        index = int(batch.pop("batch_index"))
        if datamodule.trainer is not None and datamodule.trainer.training:
            datamodule.consumed_batches = index + 1
    return batch
