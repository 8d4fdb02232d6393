"""Fixtures of the model tests: a tiny random cohere2_moe checkpoint made by transformers itself.

The reference checkpoint comes from `Cohere2MoeForCausalLM(config)` random init + its own `save_pretrained`, so
our loader is tested against what transformers really writes, not against our own exporter. The weights are
drawn with a larger std than usual so the random model's predictions are peaked and varied (a near-uniform
model would make greedy-decoding comparisons meaningless).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from north_lightning.model import NorthConfig

WINDOW = 16


def tiny_hf_config_dict() -> dict:
    """A small cohere2_moe config with North's shape rules (dense RoPE'd layer 0, global every 4th layer)."""
    cfg = NorthConfig.preset("tiny", num_hidden_layers=6, sliding_window=WINDOW, vocab_size=512, logit_scale=0.5,
                             initializer_range=0.08)
    d = cfg.to_hf_dict()
    d.pop("architectures")
    d.pop("model_type")
    return d


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Cohere2MoeConfig, Cohere2MoeForCausalLM

    torch.manual_seed(1234)
    model = Cohere2MoeForCausalLM(Cohere2MoeConfig(**tiny_hf_config_dict())).eval()
    path = tmp_path_factory.mktemp("hf_tiny_cohere2_moe")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_model(hf_checkpoint: Path):
    from transformers import Cohere2MoeForCausalLM

    return Cohere2MoeForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def window() -> int:
    """Sliding window of the `hf_checkpoint` model (small, so tests go past it cheaply)."""
    return WINDOW
