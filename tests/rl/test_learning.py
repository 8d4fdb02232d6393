"""Proof that the loss learns: a tiny North policy trained with RLOO + CISPO on a verifiable toy task raises its
mean reward clearly within a few dozen CPU steps (fixed seed, asserted margin). The batch goes through the same
packing as real rollouts (`datamodules.rl.pack_rollouts`) and the same chunked logprob head.

Task: the prompt is one of 4 "digit" tokens d; the reward is 1 iff the first generated token is the *next*
digit (d + 1 mod 4), else 0. A random policy over 32 tokens succeeds ~3% of the time."""

import pytest
import torch

from north_lightning.datamodules.rl import pack_rollouts
from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.rl.losses import cispo_loss, rloo_advantages

DIGITS = list(range(3, 7))
PROMPTS, GROUP, NEW_TOKENS, STEPS = 8, 8, 2, 30


@torch.no_grad()
def sample(model, prompts, gen):
    """Autoregressive sampling at temperature 1; returns tokens and their sampler logprobs."""
    seq = torch.tensor(prompts)
    logps = []
    for _ in range(NEW_TOKENS):
        logits = model(seq)[:, -1].float()
        tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
        logps.append(torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0])
        seq = torch.cat([seq, tok[:, None]], dim=1)
    return seq[:, len(prompts[0]):], torch.stack(logps, 1)


@pytest.mark.slow
def test_cispo_rloo_raises_reward_on_a_verifiable_toy_task():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = NorthConfig(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=32, num_experts=4, num_experts_per_tok=2, expert_intermediate_size=32,
                      dense_intermediate_size=64, first_k_dense=1, sliding_window=16, max_position_embeddings=64)
    model = NorthForCausalLM(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    rewards_per_step = []
    for step in range(STEPS):
        digits = torch.randint(0, len(DIGITS), (PROMPTS,), generator=gen)
        prompts = [[1, DIGITS[int(d)]] for d in digits for _ in range(GROUP)]
        model.eval()
        tokens, logps = sample(model, prompts, gen)
        target = torch.tensor([DIGITS[(int(d) + 1) % len(DIGITS)] for d in digits for _ in range(GROUP)])
        rewards = (tokens[:, 0] == target).float()
        rewards_per_step.append(rewards.mean().item())
        adv = rloo_advantages(rewards.view(PROMPTS, GROUP), normalize_std=True).view(-1)
        docs = [({"task_id": "digit", "segments": [
                    {"token_ids": p, "logprobs": None, "trainable": False},
                    {"token_ids": tokens[i].tolist(), "logprobs": logps[i].tolist(), "trainable": True}]}, float(adv[i]))
                for i, p in enumerate(prompts)]
        batch = pack_rollouts(docs, row_tokens=64, pad_id=0)
        mask = batch["targets"] != -100
        model.train()
        logp, ent = model.token_logprobs(batch["input_ids"], batch["targets"], position_ids=batch["position_ids"],
                                         document_ids=batch["document_ids"], with_entropy=True)
        loss, metrics = cispo_loss(logp, batch["sampler_logprobs"], batch["advantages"], mask, int(mask.sum()),
                                   entropy_BS=ent)
        # on-policy first micro-batch: the packed, recomputed logprobs equal the sampler's
        assert metrics["logprob_diff_max"] < 1e-3
        opt.zero_grad()
        loss.backward()
        opt.step()
    first, last = sum(rewards_per_step[:5]) / 5, sum(rewards_per_step[-5:]) / 5
    print(f"mean reward first 5 steps {first:.3f} -> last 5 steps {last:.3f}:", [round(r, 2) for r in rewards_per_step])
    assert first < 0.15
    assert last > first + 0.3  # observed (seed 0): 0.08 -> 0.76
