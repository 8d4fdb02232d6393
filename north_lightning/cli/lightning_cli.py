"""`python -m north_lightning fit|validate|test|predict --config ...`: LightningCLI with our defaults.

Why these defaults: YAML configs are the interface (omegaconf interpolation such as
`${trainer.default_root_dir}/checkpoints`, several `--config` files merged left to right), every swappable
piece is a `class_path` (module, datamodule, callbacks, logger), runs are reproducible by default (seed 0, the
resolved config saved next to the logs), and the console shows a Rich progress bar unless the config picks
another progress bar or disables it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import set_parsing_settings
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from north_lightning.modules.checkpoint_io import AtomicCheckpointIO


LAST_IF_ANY = "last_if_any"  # --ckpt_path value: resume from the last checkpoint, or start fresh when none


class CLIError(Exception):
    """A user error found before training starts (bad config file, nothing to resume); printed, exit 2."""


class NorthLightningCLI(LightningCLI):
    """LightningCLI that adds a Rich progress bar when the config has no progress bar of its own, writes and
    reads checkpoints through `AtomicCheckpointIO`, and refuses `--ckpt_path last` when there is nothing to
    resume (Lightning would warn and train from scratch; `--ckpt_path last_if_any` asks for that)."""

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[L.Callback]) -> L.Trainer:
        configured = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, RichProgressBar(leave=True)]
        trainer = super()._instantiate_trainer(config, callbacks)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a configured plugin is left alone
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        asked = kwargs.get("ckpt_path")
        if subcommand == "fit" and asked in ("last", LAST_IF_ANY):
            found = set().union(*(cb._find_last_checkpoints(self.trainer) for cb in self.trainer.checkpoint_callbacks
                                  if isinstance(cb, ModelCheckpoint)))
            found = {p for p in found if Path(p).exists()}
            if not found and asked == "last":
                where = ", ".join(str(cb.dirpath) for cb in self.trainer.checkpoint_callbacks
                                  if isinstance(cb, ModelCheckpoint)) or "(no ModelCheckpoint callback)"
                raise CLIError(f"--ckpt_path last: no last checkpoint in {where}; to start from scratch drop "
                               f"--ckpt_path, or pass --ckpt_path {LAST_IF_ANY} to resume only when one exists")
            kwargs["ckpt_path"] = "last" if found else None
        return kwargs


def check_config_files(argv: list[str]) -> None:
    """Parse every `--config` file as YAML first: jsonargparse's syntax errors do not name the file."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = Path(argv[i + 1])
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            continue
        if not path.is_file():
            continue  # jsonargparse says so (or it is inline YAML)
        try:
            with path.open() as fh:
                yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise CLIError(f"{path}: not valid YAML: {exc}") from exc


def run_lightning_cli(argv: list[str]) -> int:
    """Parse `argv` (starting with the subcommand), build trainer/module/datamodule and run the subcommand."""
    # "omegaconf+" resolves interpolation once, on the config merged from every --config file and command-line
    # override, so `--trainer.default_root_dir X` also moves `${trainer.default_root_dir}/checkpoints`.
    # Absolute-to-relative keeps `${trainer.x}` valid although the merged config sits under the subcommand.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when `args` and sys.argv are both given
    try:
        check_config_files(argv)
        _run(argv)
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
