"""LightningModules: `SFTModule` (supervised fine-tuning) and `RLModule` (`north_lightning.modules.rl`)."""

from north_lightning.modules.sft import SFTModule

__all__ = ["SFTModule"]
