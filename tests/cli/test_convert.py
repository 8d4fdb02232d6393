"""`python -m north_lightning convert`: both directions, round trip exact, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import CodeRunningPickle, safetensors_in
from north_lightning.__main__ import main
from north_lightning.assets import tiny_tokenizer_path
from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.modules import SFTModule

SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
             num_experts=4, num_experts_per_tok=2, expert_intermediate_size=32, dense_intermediate_size=64)


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny", **SMALL))
    model.save_pretrained(tmp_path / "hf", tokenizer_dir=tiny_tokenizer_path())
    return tmp_path / "hf"


def test_round_trip_hf_ckpt_hf_is_exact(hf_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    assert main(["convert", "hf-to-ckpt", str(hf_dir), str(ckpt)]) == 0
    module = SFTModule.load_from_checkpoint(ckpt)  # calls configure_model, then loads the weights
    reference = NorthForCausalLM.from_pretrained(hf_dir)
    for (name, a), (_, b) in zip(reference.state_dict().items(), module.model.state_dict().items()):
        assert torch.equal(a, b), name

    out = tmp_path / "hf2"
    assert main(["convert", "ckpt-to-hf", str(ckpt), str(out)]) == 0
    assert json.loads((out / "config.json").read_text()) == json.loads((hf_dir / "config.json").read_text())
    assert module.config.to_hf_dict().items() <= json.loads((out / "config.json").read_text()).items()
    a, b = safetensors_in(hf_dir), safetensors_in(out)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (out / "tokenizer.json").read_bytes() == (tiny_tokenizer_path() / "tokenizer.json").read_bytes()
    assert NorthForCausalLM.from_pretrained(out).config.hidden_size == 64


def test_trained_lightning_checkpoint_to_hf(tmp_path: Path) -> None:
    """A checkpoint written by Trainer (weights after training steps) converts to the same weights."""
    import lightning as L

    from north_lightning.assets import ASSETS_DIR
    from north_lightning.datamodules.jsonl import JsonlChatDataModule

    torch.manual_seed(0)
    module = SFTModule({"preset": "tiny", **SMALL})
    dm = JsonlChatDataModule(str(ASSETS_DIR / "demo_chat.jsonl"), seq_len=256, batch_size=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(module, dm)
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    assert main(["convert", "ckpt-to-hf", str(tmp_path / "trained.ckpt"), str(tmp_path / "hf")]) == 0
    reloaded = NorthForCausalLM.from_pretrained(tmp_path / "hf")
    for (name, a), (_, b) in zip(module.model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert (tmp_path / "hf" / "chat_template.jinja").exists()  # tokenizer recorded in the checkpoint


def test_errors_are_clear(tmp_path: Path, hf_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["convert", "ckpt-to-hf", str(tmp_path / "nope.ckpt"), str(tmp_path / "o")]) == 2
    assert "nope.ckpt: no such checkpoint file" in capsys.readouterr().err
    torch.save({"weights": 1}, tmp_path / "bad.ckpt")
    assert main(["convert", "ckpt-to-hf", str(tmp_path / "bad.ckpt"), str(tmp_path / "o")]) == 2
    assert "not a Lightning checkpoint" in capsys.readouterr().err
    assert main(["convert", "hf-to-ckpt", str(tmp_path), str(tmp_path / "x.ckpt")]) == 2
    assert "no config.json" in capsys.readouterr().err

    # A checkpoint whose tensors do not match its config names the offending tensors.
    assert main(["convert", "hf-to-ckpt", str(hf_dir), str(tmp_path / "ok.ckpt")]) == 0
    ckpt = torch.load(tmp_path / "ok.ckpt", weights_only=False)
    del ckpt["state_dict"]["model.model.norm.weight"]
    torch.save(ckpt, tmp_path / "broken.ckpt")
    assert main(["convert", "ckpt-to-hf", str(tmp_path / "broken.ckpt"), str(tmp_path / "o")]) == 2
    assert "missing ['model.norm.weight']" in capsys.readouterr().err

    cfg = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    assert main(["convert", "hf-to-ckpt", str(hf_dir), str(tmp_path / "y.ckpt")]) == 2
    assert "model_type 'llama' is not supported" in capsys.readouterr().err


def test_a_checkpoint_cannot_run_code(tmp_path: Path, hf_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """A pickle planted in a checkpoint is refused by the restricted unpickler, never run; our own checkpoints
    (numpy RNG states of older runs included: the allow-list) still load."""
    import numpy as np

    assert main(["convert", "hf-to-ckpt", str(hf_dir), str(tmp_path / "ok.ckpt")]) == 0
    ckpt = torch.load(tmp_path / "ok.ckpt", weights_only=True)
    marker = tmp_path / "pwned"
    torch.save({**ckpt, "rng": CodeRunningPickle(marker)}, tmp_path / "evil.ckpt")
    assert main(["convert", "ckpt-to-hf", str(tmp_path / "evil.ckpt"), str(tmp_path / "o")]) == 2
    assert not marker.exists(), "converting a checkpoint ran code from it"
    assert "evil.ckpt: cannot be read" in capsys.readouterr().err
    torch.save({**ckpt, "numpy_rng": np.random.get_state()}, tmp_path / "np.ckpt")
    assert main(["convert", "ckpt-to-hf", str(tmp_path / "np.ckpt"), str(tmp_path / "o2")]) == 0


def test_usage_via_python_dash_m() -> None:
    proc = subprocess.run([sys.executable, "-m", "north_lightning", "convert", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ckpt-to-hf" in proc.stdout and "hf-to-ckpt" in proc.stdout
