"""`python -m north_lightning fit|validate|test|predict --config ...`: LightningCLI with our defaults.

Why these defaults: YAML configs are the interface (omegaconf interpolation such as
`${trainer.default_root_dir}/checkpoints`, several `--config` files merged left to right), every swappable
piece is a `class_path` (module, datamodule, callbacks, logger), runs are reproducible by default (seed 0, the
resolved config saved next to the logs), and the console shows a Rich progress bar unless the config picks
another progress bar or disables it.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI


class NorthLightningCLI(LightningCLI):
    """LightningCLI that adds a Rich progress bar when the config has no progress bar of its own."""

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[L.Callback]) -> L.Trainer:
        configured = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, RichProgressBar(leave=True)]
        return super()._instantiate_trainer(config, callbacks)


def run_lightning_cli(argv: list[str]) -> int:
    """Parse `argv` (starting with the subcommand), build trainer/module/datamodule and run the subcommand."""
    # "omegaconf+" resolves interpolation once, on the config merged from every --config file and command-line
    # override, so `--trainer.default_root_dir X` also moves `${trainer.default_root_dir}/checkpoints`.
    # Absolute-to-relative keeps `${trainer.x}` valid although the merged config sits under the subcommand.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when `args` and sys.argv are both given
    try:
        _run(argv)
    finally:
        sys.argv = saved_argv
    return 0


def _run(argv: list[str]) -> None:
    NorthLightningCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
        },
        args=argv,
        auto_configure_optimizers=False,
    )
