"""Files shipped with the package: the tiny tokenizer (offline tests, demo, CI) and a tiny demo chat dataset."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def tiny_tokenizer_path() -> Path:
    """Directory of the tiny byte-level BPE tokenizer (HF format, 4,096 tokens, Cohere-style chat template
    with `{% generation %}` blocks); made by `scripts/make_tiny_tokenizer.py`."""
    return ASSETS_DIR / "tiny_tokenizer"
