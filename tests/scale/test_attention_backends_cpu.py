"""GPU attention/experts backends, the parts that run on the CPU: FlexAttention forward (it has no CPU backward in
torch 2.13) against SDPA with the dense mask, the window convention, and the clear errors of flash/megablocks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.model.attention import SDPAAttention, SequenceLayout
from north_lightning.model.attention_flex import FlexAttention, document_window_mask_mod


def _qkv_and_docs(seed: int = 0, B: int = 2, S: int = 200, H: int = 4, G: int = 2, d: int = 32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S, H, d, generator=gen)
    k = torch.randn(B, S, G, d, generator=gen)
    v = torch.randn(B, S, G, d, generator=gen)
    doc_BS = torch.zeros(B, S, dtype=torch.long)
    doc_BS[0, 70:], doc_BS[0, 150:], doc_BS[1, 120:] = 1, 2, 1  # S not a multiple of the 128 block
    return q, k, v, doc_BS


def test_mask_mod_is_itself_plus_w_previous() -> None:
    doc_BS = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
    mask_mod = document_window_mask_mod(doc_BS, window=2)
    b, h = torch.tensor(0), torch.tensor(0)
    seen = {kv for kv in range(10) if mask_mod(b, h, torch.tensor(5), torch.tensor(kv))}
    assert seen == {3, 4, 5}  # itself + 2 previous, none after
    seen = {kv for kv in range(10) if mask_mod(b, h, torch.tensor(7), torch.tensor(kv))}
    assert seen == {6, 7}  # the window stops at the document start


@pytest.mark.parametrize("window", [None, 16, 63])
def test_flex_matches_sdpa_forward(window: int | None) -> None:
    q, k, v, doc_BS = _qkv_and_docs()
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        flex = FlexAttention(scale)(q, k, v, SequenceLayout(2, 200, doc_BS), window)
        ref = SDPAAttention(scale)(q, k, v, SequenceLayout(2, 200, doc_BS), window)
    torch.testing.assert_close(flex, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_flex_compiled_on_cpu_matches_sdpa(monkeypatch) -> None:
    monkeypatch.setenv("NORTH_FLEX_COMPILE", "1")
    q, k, v, doc_BS = _qkv_and_docs(seed=1)
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        flex = FlexAttention(scale)(q, k, v, SequenceLayout(2, 200, doc_BS), 16)
        ref = SDPAAttention(scale)(q, k, v, SequenceLayout(2, 200, doc_BS), 16)
    torch.testing.assert_close(flex, ref, atol=2e-5, rtol=1e-5)


def test_whole_tiny_model_flex_equals_sdpa() -> None:
    torch.manual_seed(0)
    ref = NorthForCausalLM(NorthConfig.preset("tiny", num_hidden_layers=5)).eval()
    flex = NorthForCausalLM(NorthConfig.preset("tiny", num_hidden_layers=5, attn_backend="flex")).eval()
    flex.load_state_dict(ref.state_dict())
    ids_BS = torch.randint(0, 4096, (2, 160))
    doc_BS = torch.zeros(2, 160, dtype=torch.long)
    doc_BS[0, 90:] = 1
    with torch.no_grad():
        torch.testing.assert_close(flex(ids_BS, document_ids=doc_BS), ref(ids_BS, document_ids=doc_BS),
                                   atol=1e-4, rtol=1e-4)


def test_flash_errors_are_clear(monkeypatch) -> None:
    from north_lightning.model import attention_flash

    monkeypatch.setenv("NORTH_FLASH_IMPL", "fa4")
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ImportError, match="flash-attn-4"):
            attention_flash.FlashAttention(0.1)
    with pytest.raises(ValueError, match="NORTH_FLASH_IMPL"):
        attention_flash.load_varlen_impl("fa3")
    attn = attention_flash.FlashAttention(0.1, impl="torch")  # torch's varlen op imports everywhere
    q, k, v, doc_BS = _qkv_and_docs(S=16)
    with pytest.raises(RuntimeError, match="CUDA only"):
        attn(q, k, v, SequenceLayout(2, 16, doc_BS[:, :16]), None)


def test_megablocks_missing_names_the_install() -> None:
    if importlib.util.find_spec("megablocks") is not None:
        pytest.skip("megablocks is installed here; the GPU tests cover it")
    with pytest.raises(ImportError, match="--no-deps megablocks stanford-stk grouped_gemm"):
        NorthForCausalLM(NorthConfig.preset("tiny", experts_backend="megablocks"))
