"""The RL training step the benches time (`async_rl.py`, `weight_export.py`): one packed batch of synthetic
rollouts (half prompt, half trainable generation with sampler logprobs), CISPO loss, backward, AdamW. Shared so the
two benches' step-time figures mean the same thing. Imported as `from rl_step import ...` (a bench runs as
`python bench/X.py`, which puts `bench/` on the path)."""

from __future__ import annotations

import time

import torch

from north_lightning.datamodules.rl import pack_rollouts
from north_lightning.rl.losses import cispo_loss


def rl_batch(rollouts: int, tokens: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    docs = []
    for i in range(rollouts):
        prompt = torch.randint(3, vocab, (tokens // 2,), generator=g).tolist()
        gen = torch.randint(3, vocab, (tokens - tokens // 2,), generator=g).tolist()
        docs.append(({"task_id": f"t{i}", "segments": [
            {"token_ids": prompt, "logprobs": None, "trainable": False},
            {"token_ids": gen, "logprobs": [-8.0] * len(gen), "trainable": True}]}, 1.0 if i % 2 else -1.0))
    return pack_rollouts(docs, row_tokens=2 * tokens, pad_id=0)


def timed_rl_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    """One optimizer step on `batch`; returns its wall seconds."""
    mask = batch["targets"] != -100
    start = time.perf_counter()
    logp, _ = model.token_logprobs(batch["input_ids"], batch["targets"], position_ids=batch["position_ids"],
                                   document_ids=batch["document_ids"])
    loss, _ = cispo_loss(logp, batch["sampler_logprobs"], batch["advantages"], mask, int(mask.sum()))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - start
