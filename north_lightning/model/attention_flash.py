"""`flash` attention backend: FlashAttention varlen kernels over packed documents (CUDA only).

The batch [B, S] is flattened to B*S tokens and every document becomes one varlen sequence (`cu_seqlens` from
the document ids, see `SequenceLayout.cu_seqlens`), so no work is spent on cross-document or padding pairs and
no S x S mask exists. Sliding layers pass `window_size=(W, 0)`: flash-attn's documented window lets query i see
keys in [i - W, i + 0] inclusive, i.e. itself + W previous tokens, which is exactly the Cohere/vLLM convention
the model uses for `window` (`NorthConfig.attention_window`). K/V keep their G heads: the kernels do GQA
natively (H must be a multiple of G).

Three implementations of the same kernel contract, picked by `NORTH_FLASH_IMPL` (default `auto` = the first
importable in this order, and the choice is logged and kept in `FlashAttention.impl`):
- `fa4`:   FlashAttention-4 (`pip install flash-attn-4`, module `flash_attn.cute`; CuTe-DSL, JIT-compiled,
           no CUDA build; Hopper/Blackwell only).
- `fa2`:   flash-attn 2 (`pip install flash-attn`, module `flash_attn`; prebuilt wheel must match torch/CUDA).
- `torch`: `torch.nn.attention.varlen.varlen_attn` (PyTorch's own FlashAttention varlen op, torch >= 2.9).
None importable is an ImportError naming the extra; inputs must be bf16/fp16 (flash kernels have no fp32 path).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable

import torch
from torch import nn

from north_lightning.model.attention import SequenceLayout

log = logging.getLogger(__name__)

IMPL_ORDER = ("fa4", "fa2", "torch")
INSTALL_HINT = ("pip install flash-attn-4 (FlashAttention-4, Hopper/Blackwell) or pip install "
                "'north_lightning[gpu]' (flash-attn 2), or use a torch with torch.nn.attention.varlen")

VarlenFn = Callable[..., torch.Tensor]


def _load_fa4() -> VarlenFn:
    cute = importlib.import_module("flash_attn.cute")

    def run(q, k, v, cu, max_len, scale, window):
        out = cute.flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len, max_seqlen_k=max_len,
            softmax_scale=scale, causal=True, window_size=(window, 0) if window is not None else (None, None),
        )
        return out[0] if isinstance(out, tuple) else out  # some FA4 releases return (out, lse)

    return run


def _load_fa2() -> VarlenFn:
    flash_attn = importlib.import_module("flash_attn")

    def run(q, k, v, cu, max_len, scale, window):
        return flash_attn.flash_attn_varlen_func(
            q, k, v, cu, cu, max_len, max_len, dropout_p=0.0, softmax_scale=scale, causal=True,
            window_size=(window, 0) if window is not None else (-1, -1),
        )

    return run


def _load_torch() -> VarlenFn:
    varlen = importlib.import_module("torch.nn.attention.varlen")
    params = inspect.signature(varlen.varlen_attn).parameters
    missing = [name for name in ("window_size", "enable_gqa") if name not in params]
    if missing:  # older torch releases: varlen_attn without sliding windows / GQA
        raise ImportError(f"torch {torch.__version__} varlen_attn lacks {missing}")

    def run(q, k, v, cu, max_len, scale, window):
        return varlen.varlen_attn(
            q, k, v, cu, cu, max_len, max_len, scale=scale,
            window_size=(window, 0) if window is not None else (-1, 0), enable_gqa=True,
        )

    return run


LOADERS: dict[str, Callable[[], VarlenFn]] = {"fa4": _load_fa4, "fa2": _load_fa2, "torch": _load_torch}


def load_varlen_impl(name: str | None = None) -> tuple[str, VarlenFn]:
    """(impl name, callable) for `name` or `NORTH_FLASH_IMPL` ('auto' tries fa4, fa2, torch in order)."""
    name = name or os.environ.get("NORTH_FLASH_IMPL", "auto")
    if name != "auto" and name not in LOADERS:
        raise ValueError(f"NORTH_FLASH_IMPL={name!r}: expected one of {['auto', *IMPL_ORDER]}")
    errors = []
    for candidate in (IMPL_ORDER if name == "auto" else (name,)):
        try:
            fn = LOADERS[candidate]()
        except (ImportError, AttributeError, OSError) as exc:  # OSError: a wheel built for another CUDA
            errors.append(f"{candidate}: {exc}")
            continue
        log.info("flash attention backend uses %s", candidate)
        return candidate, fn
    raise ImportError(f"attention backend 'flash' has no usable kernel ({'; '.join(errors)}). {INSTALL_HINT}")


class FlashAttention(nn.Module):
    """Same interface as `SDPAAttention`: q [B,S,H,d], k/v [B,S,G,d], returns [B,S,H,d]."""

    def __init__(self, scale: float, impl: str | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.impl, self._varlen = load_varlen_impl(impl)

    def forward(self, q_BSHd: torch.Tensor, k_BSGd: torch.Tensor, v_BSGd: torch.Tensor, layout: SequenceLayout,
                window: int | None) -> torch.Tensor:
        if not q_BSHd.is_cuda:
            raise RuntimeError("attention backend 'flash' runs on CUDA only; use attn_backend='sdpa' on the CPU")
        if q_BSHd.dtype not in (torch.bfloat16, torch.float16):
            raise TypeError(f"attention backend 'flash' needs bf16/fp16 activations, got {q_BSHd.dtype} "
                            "(train with precision 'bf16-true' or 'bf16-mixed')")
        B, S, H, d = q_BSHd.shape
        cu_seqlens, max_len = layout.cu_seqlens(q_BSHd.device)
        out_THd = self._varlen(
            q_BSHd.reshape(B * S, H, d), k_BSGd.reshape(B * S, -1, d), v_BSGd.reshape(B * S, -1, d),
            cu_seqlens, max_len, self.scale, window,
        )
        return out_THd.view(B, S, H, d)
