"""Router replay plumbing: a rollout's `routed_experts` survives the spool, is packed at its document's tokens
(-1 elsewhere), and `RLModule(router_replay=True)` trains on exactly those experts; off by default."""

from __future__ import annotations

import pytest
import torch

from north_lightning.datamodules.rl import RolloutBatchStream, pack_rollouts
from north_lightning.modules.rl import RLModule
from north_lightning.rl.spool import RolloutSpool

CFG = dict(vocab_size=32, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
           head_dim=16, num_experts=8, num_experts_per_tok=2, expert_intermediate_size=16,
           dense_intermediate_size=32, first_k_dense=1, sliding_window=8, max_position_embeddings=64)
L, K = 2, 2  # MoE layers (decoder layers 1 and 2), top-k


def rollout(task: str, n_prompt: int, n_gen: int, routed: torch.Tensor | None) -> dict:
    r = {"task_id": task, "reward": 1.0 if task == "a" else 0.0, "versions": [0], "segments": [
        {"token_ids": list(range(3, 3 + n_prompt)), "logprobs": None, "trainable": False},
        {"token_ids": list(range(10, 10 + n_gen)), "logprobs": [-1.0] * n_gen, "trainable": True}]}
    if routed is not None:
        r["routed_experts"] = routed
    return r


def fixed_routing(n: int, first: int) -> torch.Tensor:
    """[n, L, K] uint8 (vLLM's dtype for <= 256 experts): experts (first, first+1) everywhere."""
    return torch.tensor([first, first + 1], dtype=torch.uint8).expand(n, L, K).clone()


def test_spool_and_packing_place_the_routing_at_its_document() -> None:
    a = rollout("a", 3, 4, fixed_routing(6, first=6))  # 7 tokens, routing for the first 6 (the engine's)
    b = rollout("b", 2, 3, None)
    out = pack_rollouts([(a, 1.0), (b, -1.0)], row_tokens=16, pad_id=0)
    routed = out["routed_experts"]
    assert routed.shape == (1, 16, L, K) and routed.dtype == torch.int16
    assert torch.all(routed[0, :6] == torch.tensor([6, 7], dtype=torch.int16))
    assert torch.all(routed[0, 6:] == -1)  # a's last token, all of b, the padding route themselves
    assert "routed_experts" not in pack_rollouts([(b, 0.0)], row_tokens=16, pad_id=0)
    with pytest.raises(ValueError, match="task 'c'.*routed_experts has shape \\(3, 3, 2\\)"):
        pack_rollouts([(a, 1.0), (rollout("c", 1, 1, torch.zeros(3, 3, 2, dtype=torch.uint8)), 0.0)], 16, 0)


def test_spool_batch_streams_its_routing(tmp_path) -> None:
    spool = RolloutSpool(tmp_path)
    group = {"group_id": 0, "task_id": "a", "rollouts": [rollout("a", 3, 4, fixed_routing(6, 0)),
                                                          rollout("b", 3, 4, fixed_routing(6, 2))]}
    spool.put(0, {"index": 0, "groups": [group]})
    micro = RolloutBatchStream(tmp_path, micro_batches=1, row_tokens=16, pad_id=0, rank=0, world_size=1).resolve(0, 0)
    routed = micro["routed_experts"]
    assert routed.shape[2:] == (L, K)
    assert sorted(set(routed[routed >= 0].tolist())) == [0, 1, 2, 3]


def _module(replay: bool) -> RLModule:
    torch.manual_seed(0)
    module = RLModule(model=CFG, lr=1e-3, router_replay=replay, moe_aux_loss=False)
    module.configure_model()
    with torch.no_grad():
        for block in module.model.moe_blocks():
            block.gate.weight.mul_(10.0)
    return module


def _batch() -> dict:
    batch = pack_rollouts([(rollout("a", 3, 4, fixed_routing(6, first=5)), 1.0)], row_tokens=8, pad_id=0)
    batch["num_tokens"] = torch.tensor(4.0)
    return batch


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\(\)`")
def test_rl_module_replays_the_batch_routing_only_when_asked() -> None:
    batch = _batch()
    replaying, ignoring = _module(True), _module(False)
    loss_replay = replaying.training_step(batch, 0)
    for block in replaying.model.moe_blocks():
        chosen = block.last_expert_idx_TK.view(8, K)
        assert torch.all(chosen[:6] == torch.tensor([5, 6]))
    loss_replay.backward()
    assert all(b.gate.weight.grad.abs().sum() > 0 for b in replaying.model.moe_blocks())

    loss_own = ignoring.training_step(batch, 0)  # flag off (the default): the routing is carried but not used
    own = [b.last_expert_idx_TK.view(8, K)[:6] for b in ignoring.model.moe_blocks()]
    assert any(not torch.all(o == torch.tensor([5, 6])) for o in own)
    assert not torch.equal(loss_own.detach(), loss_replay.detach())

    without = pack_rollouts([(rollout("a", 3, 4, None), 1.0)], row_tokens=8, pad_id=0)
    without["num_tokens"] = torch.tensor(4.0)
    with pytest.raises(ValueError, match="router_replay=true but the rollout batch carries no routed_experts"):
        replaying.training_step(without, 0)
