"""The blockwise sliding-window SDPA path must equal the dense-mask path exactly (it only skips zeros)."""

import pytest
import torch
import torch.nn.functional as F

from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.model.attention import SDPAAttention, SequenceLayout


@pytest.mark.parametrize("S,W,docs", [(1024, 64, [260, 256, 258, 250]), (300, 64, [100, 200]), (257, 32, None)])
def test_blocked_window_equals_dense_mask_forward_and_backward(S, W, docs):
    torch.manual_seed(0)
    B, H, G, d = 2, 4, 2, 16
    q_BSHd = torch.randn(B, S, H, d, dtype=torch.float64, requires_grad=True)
    k_BSGd = torch.randn(B, S, G, d, dtype=torch.float64, requires_grad=True)
    v_BSGd = torch.randn(B, S, G, d, dtype=torch.float64, requires_grad=True)
    doc_BS = None if docs is None else torch.cat([torch.full((n,), i) for i, n in enumerate(docs)])[None].repeat(B, 1)
    layout = SequenceLayout(B, S, doc_BS)
    assert S >= 4 * W  # the blocked path is taken
    blocked = SDPAAttention(0.25)(q_BSHd, k_BSGd, v_BSGd, layout, W)
    dense = F.scaled_dot_product_attention(
        q_BSHd.transpose(1, 2), k_BSGd.transpose(1, 2), v_BSGd.transpose(1, 2),
        attn_mask=layout.allowed_mask(W, q_BSHd.device), scale=0.25, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(blocked, dense, rtol=0, atol=1e-12)
    grads_blocked = torch.autograd.grad(blocked.square().sum(), (q_BSHd, k_BSGd, v_BSGd))
    grads_dense = torch.autograd.grad(dense.square().sum(), (q_BSHd, k_BSGd, v_BSGd))
    for a, b in zip(grads_blocked, grads_dense):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_packed_long_row_equals_documents_run_alone():
    """Two documents longer than 4 windows packed in one row give the logits each gives alone."""
    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny")).eval()
    W = model.config.sliding_window
    a = torch.randint(0, 4096, (1, 4 * W + 7))
    b = torch.randint(0, 4096, (1, 4 * W + 3))
    ids = torch.cat([a, b], 1)
    docs = torch.cat([torch.zeros_like(a), torch.ones_like(b)], 1)
    pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
    with torch.no_grad():
        packed = model(ids, position_ids=pos, document_ids=docs)
        alone = torch.cat([model(a), model(b)], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
