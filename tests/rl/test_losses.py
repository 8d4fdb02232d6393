"""Hand-computed RLOO and CISPO cases, clipping at both ends, masking, and micro-batch accumulation."""

import math

import pytest
import torch

from north_lightning.rl.losses import cispo_loss, rloo_advantages


def test_rloo_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = rloo_advantages(rewards)
    # prompt 0: A_0 = 1 - (0+0+1)/3 = 2/3; A_1 = 0 - (1+0+1)/3 = -2/3
    expected = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    # advantages of a group sum to zero
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(2))


def test_rloo_std_normalised():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    adv = rloo_advantages(rewards, normalize_std=True, eps=0.0)
    # population std of {1,0,0,1} = 0.5
    torch.testing.assert_close(adv, torch.tensor([[4 / 3, -4 / 3, -4 / 3, 4 / 3]]))
    same = rloo_advantages(torch.ones(1, 8), normalize_std=True)
    assert torch.equal(same, torch.zeros(1, 8))


def test_rloo_rejects_bad_shapes():
    with pytest.raises(ValueError, match="group size 1"):
        rloo_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="prompts, group"):
        rloo_advantages(torch.ones(8))


def test_cispo_hand_computed_with_clipping_both_ends():
    # Four tokens: ratio 1, ratio e^2 (~7.39, clipped to 1+eps_high=3), ratio e^-2 (~0.135, clipped up to
    # 1-eps_low=0.5), and a masked token holding garbage.
    sampler = torch.tensor([[-1.0, -3.0, -0.5, 0.0]])
    logp = torch.tensor([[-1.0, -1.0, -2.5, 5.0]], requires_grad=True)
    adv = torch.tensor([[2.0, 1.0, -1.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, m = cispo_loss(logp, sampler, adv, mask, num_tokens=3, eps_low=0.5, eps_high=2.0)
    weights = [1.0, 3.0, 0.5]
    expected = -(weights[0] * 2.0 * -1.0 + weights[1] * 1.0 * -1.0 + weights[2] * -1.0 * -2.5) / 3
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # d loss / d logp_t = -w_t * A_t / N; zero on the masked token; no gradient through the weight.
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0 / 3, -3.0 / 3, 0.5 / 3, 0.0]]))
    assert m["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 3)
    assert m["ratio_mean"].item() == pytest.approx((1 + math.exp(2) + math.exp(-2)) / 3, rel=1e-5)
    assert m["logprob_diff_max"].item() == pytest.approx(2.0)
    assert m["logprob_diff_mean"].item() == pytest.approx(4 / 3)


def test_cispo_default_has_no_lower_clip_and_weight_at_most_five():
    sampler = torch.tensor([[0.0, 0.0]])
    logp = torch.tensor([[-10.0, 3.0]], requires_grad=True)
    adv = torch.ones(1, 2)
    loss, m = cispo_loss(logp, sampler, adv, torch.ones(1, 2, dtype=torch.bool), num_tokens=2)
    loss.backward()
    # weight of token 0 = e^-10 (unclipped), token 1 = 5 (clipped from e^3)
    torch.testing.assert_close(logp.grad, torch.tensor([[-math.exp(-10) / 2, -5.0 / 2]]))
    assert m["clip_frac_low"].item() == 0.0
    assert m["clip_frac_high"].item() == 0.5


def test_cispo_on_policy_reduces_to_policy_gradient():
    torch.manual_seed(0)
    logp = torch.randn(2, 5).requires_grad_()
    adv = torch.randn(2, 5)
    mask = torch.rand(2, 5) > 0.3
    loss, m = cispo_loss(logp, logp.detach().clone(), adv, mask, num_tokens=int(mask.sum()))
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    expected = -(adv * logp * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)


def test_two_micro_batches_accumulate_to_one_batch_gradient():
    """Sequences of different lengths split into two micro-batches (padded differently) give the same
    accumulated gradient as one batch, because N_tokens is the global count."""
    torch.manual_seed(0)
    vocab, dim = 11, 6
    head = torch.nn.Linear(dim, vocab)
    lengths = [7, 3, 5]
    seqs = [(torch.randn(n, dim), torch.randint(0, vocab, (n,)), torch.randn(n) - 2.0) for n in lengths]
    advs = [1.5, -0.5, 0.7]
    masks = [torch.rand(n) > 0.25 for n in lengths]
    total = int(sum(m.sum() for m in masks))

    def batch(idx):
        S = max(lengths[i] for i in idx)
        x = torch.zeros(len(idx), S, dim)
        tgt = torch.zeros(len(idx), S, dtype=torch.long)
        samp = torch.zeros(len(idx), S)
        adv = torch.zeros(len(idx), S)
        mask = torch.zeros(len(idx), S, dtype=torch.bool)
        for b, i in enumerate(idx):
            n = lengths[i]
            x[b, :n], tgt[b, :n], samp[b, :n] = seqs[i]
            adv[b, :n] = advs[i]
            mask[b, :n] = masks[i]
        return x, tgt, samp, adv, mask

    def loss_of(idx):
        x, tgt, samp, adv, mask = batch(idx)
        logp = torch.log_softmax(head(x), -1).gather(-1, tgt[..., None])[..., 0]
        return cispo_loss(logp, samp, adv, mask, num_tokens=total)[0]

    head.zero_grad()
    loss_of([0, 1, 2]).backward()
    full = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    loss_of([0, 2]).backward()
    loss_of([1]).backward()
    for g_full, p in zip(full, head.parameters()):
        torch.testing.assert_close(p.grad, g_full, rtol=1e-5, atol=1e-6)


def test_cispo_rejects_bad_input():
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="shapes differ"):
        cispo_loss(x, torch.zeros(1, 2), x, x.bool(), 1)
    with pytest.raises(ValueError, match="num_tokens"):
        cispo_loss(x, x, x, x.bool(), 0)
    with pytest.raises(ValueError, match="eps_low"):
        cispo_loss(x, x, x, x.bool(), 1, eps_low=1.5)
