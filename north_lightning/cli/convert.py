"""`python -m north_lightning convert`: Lightning checkpoint <-> HF directory.

    python -m north_lightning convert ckpt-to-hf CKPT OUT_DIR [--tokenizer DIR]
    python -m north_lightning convert hf-to-ckpt HF_DIR OUT_CKPT

`ckpt-to-hf` writes what transformers' `Cohere2MoeForCausalLM` and vLLM load (config.json, safetensors, tokenizer
files). `hf-to-ckpt` writes a weights-only Lightning checkpoint of an `SFTModule`
(`SFTModule.load_from_checkpoint(OUT_CKPT)` works); to fine-tune an HF model, `model.init_args.init_from: HF_DIR`
in the YAML config is the direct route. Checkpoints are read with torch's restricted unpickler and our allow-list
(`model/safe_load.py`): a checkpoint cannot run code here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from north_lightning.model.safe_load import load_checkpoint_file

MODEL_PREFIX = "model."


class ConvertError(Exception):
    """A user-facing conversion error (bad path, not a checkpoint, mismatched tensors)."""


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConvertError(f"{path}: no such checkpoint file")
    try:
        ckpt = load_checkpoint_file(path)
    except Exception as err:
        raise ConvertError(f"{path}: cannot be read as a torch checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConvertError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def _config_from_checkpoint(ckpt: dict[str, Any], path: Path):
    from north_lightning.model import NorthConfig
    from north_lightning.model.config import build_north_config

    if "north_config" in ckpt:
        return NorthConfig.from_hf_dict(ckpt["north_config"])
    hp = ckpt.get("hyper_parameters") or {}
    if "model" not in hp:
        raise ConvertError(f"{path}: no model config in the checkpoint (neither 'north_config' nor hyper_parameters.model)")
    return build_north_config(hp["model"], None, hp.get("config_overrides"))


def ckpt_to_hf(ckpt_path: Path, out_dir: Path, tokenizer: Path | None = None) -> Path:
    """Write the `model.*` weights of a Lightning checkpoint as an HF directory; returns `out_dir`."""
    from north_lightning.model import NorthForCausalLM

    ckpt = _load_checkpoint(ckpt_path)
    config = _config_from_checkpoint(ckpt, ckpt_path)
    weights = {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    if not weights:
        raise ConvertError(f"{ckpt_path}: state_dict has no '{MODEL_PREFIX}*' tensors (not an SFTModule/RLModule checkpoint?)")
    model = NorthForCausalLM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or wrong_shape:
        raise ConvertError(f"{ckpt_path}: checkpoint does not match its config: missing {missing[:8]}, unexpected "
                           f"{unexpected[:8]}, wrong shape {wrong_shape[:8]}")
    model.load_state_dict(weights)
    tokenizer_dir = tokenizer or ckpt.get("tokenizer_dir")
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise ConvertError(f"tokenizer directory {tokenizer_dir} does not exist (pass --tokenizer DIR)")
    model.save_pretrained(out_dir, tokenizer_dir=tokenizer_dir)
    if tokenizer_dir is None:
        print(f"note: no tokenizer recorded in {ckpt_path}; pass --tokenizer DIR to copy one", file=sys.stderr)
    return out_dir


def hf_to_ckpt(hf_dir: Path, out_ckpt: Path) -> Path:
    """Write a weights-only `SFTModule` checkpoint from an HF directory; returns `out_ckpt`."""
    import lightning as L

    from north_lightning.modules import SFTModule

    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"{hf_dir}: no config.json (expected an HF model directory)")
    module = SFTModule(init_from=str(hf_dir))
    module.configure_model()
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(module.config).items()}
    hyper_parameters = {**dict(module.hparams), "model": fields, "init_from": None}
    tokenizer_dir = hf_dir if (hf_dir / "tokenizer.json").is_file() or (hf_dir / "tokenizer.model").is_file() else None
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": hyper_parameters,
        "north_config": module.config.to_hf_dict(),
        "tokenizer_dir": str(tokenizer_dir.resolve()) if tokenizer_dir else None,
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    out_ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out_ckpt)
    return out_ckpt


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m north_lightning convert",
                                     description="Convert between a Lightning checkpoint and an HF directory.")
    sub = parser.add_subparsers(dest="direction", required=True)
    to_hf = sub.add_parser("ckpt-to-hf", help="Lightning checkpoint -> HF directory (transformers / vLLM)")
    to_hf.add_argument("ckpt", type=Path)
    to_hf.add_argument("out_dir", type=Path)
    to_hf.add_argument("--tokenizer", type=Path, default=None,
                       help="tokenizer directory to copy (default: the one recorded in the checkpoint)")
    to_ckpt = sub.add_parser("hf-to-ckpt", help="HF directory -> weights-only SFTModule checkpoint")
    to_ckpt.add_argument("hf_dir", type=Path)
    to_ckpt.add_argument("out_ckpt", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.direction == "ckpt-to-hf":
            out = ckpt_to_hf(args.ckpt, args.out_dir, args.tokenizer)
        else:
            out = hf_to_ckpt(args.hf_dir, args.out_ckpt)
    except (ConvertError, ValueError, FileNotFoundError) as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
