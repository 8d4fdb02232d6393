"""North (Cohere2MoE) model: config + presets, the decoder, and HF/vLLM-exact checkpoint interop."""

from north_lightning.model.config import NorthConfig
from north_lightning.model.transformer import NorthForCausalLM

__all__ = ["NorthConfig", "NorthForCausalLM"]
