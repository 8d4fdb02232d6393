"""Router replay (`routed_experts=`): recorded choices replay exactly, other choices route exactly there, the
router keeps its gradient through the replayed gates, and bad indices fail naming the layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.model.moe import MoEBlock


def small_model(backend: str = "torch", **overrides) -> NorthForCausalLM:
    """1 dense + 2 MoE layers, 16 experts top-4: a few ms per forward."""
    config = NorthConfig.preset("tiny", num_hidden_layers=3, vocab_size=512, hidden_size=64, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=32, dense_intermediate_size=128,
                                expert_intermediate_size=32, experts_backend=backend, **overrides)
    model = NorthForCausalLM(config)
    model.reset_parameters(seed=0)
    with torch.no_grad():  # spread the router logits so the top-k is far from ties
        for block in model.moe_blocks():
            block.gate.weight.mul_(20.0)
    return model


def batch(B: int = 2, S: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 512, (B, S + 1), generator=torch.Generator().manual_seed(1))
    return ids[:, :-1], ids[:, 1:]


def loss_and_grads(model: NorthForCausalLM, routed=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    inputs, targets = batch()
    logp, _ = model.token_logprobs(inputs, targets, routed_experts=routed)
    (-logp.mean() + model.moe_aux_loss()).backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def random_choices(T: int, K: int, E: int, seed: int, exclude: int | None = None) -> torch.Tensor:
    """[T, K] distinct experts per token (never `exclude`)."""
    scores_TE = torch.rand(T, E, generator=torch.Generator().manual_seed(seed))
    if exclude is not None:
        scores_TE[:, exclude] = -1.0
    return scores_TE.argsort(-1, descending=True)[:, :K]


@pytest.mark.parametrize("backend,norm_topk_prob", [("torch", False), ("grouped", False), ("torch", True)])
def test_replaying_recorded_routing_gives_identical_logits_and_gradients(backend: str, norm_topk_prob: bool) -> None:
    model = small_model(backend, norm_topk_prob=norm_topk_prob, router_aux_loss_coef=0.01).train()
    logp, grads = loss_and_grads(model)
    recorded = model.last_routed_experts()
    assert len(recorded) == 2 and recorded[0].shape == (2 * 12, 4) and recorded[0].dtype == torch.uint8
    as_batch_tensor = torch.stack(recorded, dim=1).view(2, 12, 2, 4)  # the packed-batch form [B, S, L, K]
    for routed in (recorded, as_batch_tensor):
        logp_replay, grads_replay = loss_and_grads(model, routed)
        assert torch.equal(logp_replay, logp)
        assert grads_replay.keys() == grads.keys()
        for name, grad in grads.items():
            assert torch.equal(grads_replay[name], grad), name
        assert all(torch.equal(a, b) for a, b in zip(model.last_routed_experts(), recorded))


def test_rows_of_minus_one_route_themselves() -> None:
    model = small_model().eval()
    inputs, _ = batch()
    with torch.no_grad():
        reference = model(inputs)
        recorded = model.last_routed_experts()
        partial = [r.long() for r in recorded]
        for r in partial:
            r[::2] = -1  # every other token: no replay
        assert torch.equal(model(inputs, routed_experts=partial), reference)


def test_replaying_other_experts_routes_exactly_to_them() -> None:
    model = small_model().eval()
    inputs, _ = batch()
    T, K, E = inputs.numel(), 4, 16
    with torch.no_grad():
        own = model(inputs)
        own_choice = model.last_routed_experts()
    given = [random_choices(T, K, E, seed=10 + i) for i in range(2)]
    assert not all(torch.equal(g.sort(-1).values, o.sort(-1).values) for g, o in zip(given, own_choice))

    block: MoEBlock = model.moe_blocks()[0]
    seen = {}
    block.experts.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], routing=args[1]))
    block_inputs = {}
    block.register_forward_hook(lambda mod, args, out: block_inputs.update(x=args[0], out=out))
    with torch.no_grad():
        replayed = model(inputs, routed_experts=given)
    assert (replayed - own).abs().max() > 1e-3
    assert torch.equal(model.last_routed_experts()[0].long(), given[0])
    assert torch.equal(seen["routing"].counts_E, torch.bincount(given[0].flatten(), minlength=E))

    # the block's output is exactly sum_k sigmoid(router logit at the given expert) * SwiGLU_expert(x)
    x_TD = block_inputs["x"].reshape(T, -1)
    logits_TE = x_TD @ block.gate.weight.T
    manual_TD = torch.zeros_like(x_TD)
    for t in range(T):
        for e in given[0][t].tolist():
            gate, up = (block.experts.gate_up_proj[e] @ x_TD[t]).chunk(2)
            manual_TD[t] += torch.sigmoid(logits_TE[t, e]) * (block.experts.down_proj[e] @ (F.silu(gate) * up))
    assert torch.allclose(block_inputs["out"].reshape(T, -1), manual_TD, atol=1e-5, rtol=1e-4)


def test_router_gets_gradient_through_the_replayed_gates_only() -> None:
    """No aux loss: the router's gradient comes from the gate values alone, so an expert that the replay never
    uses gets exactly none, and every replayed one gets some."""
    model = small_model(router_aux_loss_coef=0.0).train()
    T, K, E = 24, 4, 16
    given = [random_choices(T, K, E, seed=20 + i, exclude=0) for i in range(2)]
    _, grads = loss_and_grads(model, given)
    for i, block in enumerate(model.moe_blocks()):
        grad_ED = grads[f"model.layers.{i + 1}.mlp.gate.weight"]
        used = torch.zeros(E, dtype=torch.bool)
        used[given[i].flatten()] = True
        assert torch.all(grad_ED[~used] == 0)
        assert torch.all(grad_ED[used].abs().sum(-1) > 0)


def test_aux_loss_counts_the_replayed_load() -> None:
    model = small_model(router_aux_loss_coef=0.01).train()
    inputs, targets = batch()
    only_first_four = torch.arange(4).expand(inputs.numel(), 4)
    model.token_logprobs(inputs, targets, routed_experts=[only_first_four] * 2)
    load = model.expert_load()
    assert torch.allclose(load[:, :4], torch.full((2, 4), 0.25)) and torch.all(load[:, 4:] == 0)
    assert model.moe_aux_loss().requires_grad


@pytest.mark.parametrize("bad,message", [
    (lambda T: torch.zeros(T, 3, dtype=torch.long), r"MoE layer 2: routed_experts has shape \(24, 3\)"),
    (lambda T: torch.zeros(T - 1, 4, dtype=torch.long), r"MoE layer 2: routed_experts has shape \(23, 4\)"),
    (lambda T: torch.full((T, 4), 16), r"MoE layer 2: .*expert index 16 outside \[0, 16\)"),
    (lambda T: torch.tensor([[0, 1, 2, -1]] * T), r"MoE layer 2: .*expert index -1 outside"),
    (lambda T: torch.full((T, 4), 255, dtype=torch.uint8), r"MoE layer 2: .*expert index 255 outside"),
    (lambda T: torch.zeros(T, 4), r"MoE layer 2: routed_experts must be an integer tensor"),
    (lambda T: torch.tensor([[0, 1, 1, 2]] * T), r"MoE layer 2: routed_experts names the same expert twice"),
])
def test_bad_routed_experts_raise_naming_the_layer(bad, message: str) -> None:
    model = small_model()
    inputs, _ = batch()
    T = inputs.numel()
    good = random_choices(T, 4, 16, seed=3)
    with pytest.raises(ValueError, match=message):
        model(inputs, routed_experts=[good, bad(T)])


def test_wrong_number_of_layers_or_batch_shape_is_an_error() -> None:
    model = small_model()
    inputs, _ = batch()
    with pytest.raises(ValueError,
                       match=r"routed_experts has 1 layers, the model has 2 MoE layers \(decoder layers \[1, 2\]\)"):
        model(inputs, routed_experts=[random_choices(inputs.numel(), 4, 16, seed=3)])
    with pytest.raises(ValueError, match=r"expected \[2, 12, 2, top_k\]"):
        model(inputs, routed_experts=torch.zeros(2, 12, 3, 4, dtype=torch.long))


def test_replay_under_activation_checkpointing_matches() -> None:
    """Each checkpointed layer recomputes its forward in backward: the replayed indices must reach it again."""
    from north_lightning.model.parallelize import apply_activation_checkpointing

    model = small_model(router_aux_loss_coef=0.0).train()
    given = [random_choices(24, 4, 16, seed=30 + i) for i in range(2)]
    logp, grads = loss_and_grads(model, given)
    apply_activation_checkpointing(model)
    logp_ckpt, grads_ckpt = loss_and_grads(model, given)
    assert torch.equal(logp_ckpt, logp)
    for name, grad in grads.items():
        assert torch.allclose(grads_ckpt[name], grad, atol=1e-7, rtol=1e-6), name
