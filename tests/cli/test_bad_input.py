"""Careless input gets a clear error naming the file or flag, never a traceback or a silent wrong answer:
`plan` with a non-positive node count, a corrupt safetensors shard, a YAML syntax error, `--ckpt_path last` with
nothing to resume, a truncated `last.ckpt`; checkpoints are written atomically and exports are world-readable
like the rest of the export."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from north_lightning.__main__ import main
from north_lightning.model import NorthConfig, NorthForCausalLM

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
             num_experts=4, num_experts_per_tok=2, expert_intermediate_size=32, dense_intermediate_size=64)
BAD_YAML = "trainer:\n  max_steps: [1\n  x: 2\n"


@pytest.mark.parametrize("nodes", ["0", "-3"])
def test_plan_refuses_non_positive_nodes(nodes: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--config", "tiny", "--nodes", nodes])
    assert exit_.value.code == 2 and "--nodes" in capsys.readouterr().err


def test_plan_refuses_zero_nodes_from_the_yaml(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"init_args": {"model": {"preset": "tiny"}}},
                                      "trainer": {"num_nodes": 0}}))
    with pytest.raises(SystemExit, match="--nodes must be at least 1, got 0"):
        main(["plan", "--config", str(config)])


def test_yaml_syntax_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from north_lightning.datamodules.mixture import MixtureSpec

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    with pytest.raises(SystemExit, match=str(bad)):
        main(["plan", "--config", str(bad)])
    with pytest.raises(ValueError, match=str(bad)):
        MixtureSpec.load(bad)
    assert main(["fit", "--config", str(REPO / "configs" / "tiny" / "sft.yaml"), "--config", str(bad)]) == 2
    assert f"{bad}: not valid YAML" in capsys.readouterr().err


def test_a_corrupt_safetensors_shard_is_named_and_exports_are_0644(tmp_path: Path) -> None:
    NorthForCausalLM(NorthConfig.preset("tiny", **SMALL)).save_pretrained(tmp_path / "hf")
    shard = next((tmp_path / "hf").glob("*.safetensors"))
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(shard.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(
        (tmp_path / "hf" / "config.json").stat().st_mode)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=str(shard)):
        NorthForCausalLM.from_pretrained(tmp_path / "hf")


_WRITE_PAST_LIMIT = """
import resource, signal, sys, torch
from north_lightning.modules.checkpoint_io import AtomicCheckpointIO
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    AtomicCheckpointIO().save_checkpoint({"w": torch.randn(1 << 20)}, sys.argv[1])  # 4 MB: the disk "fills"
except (OSError, RuntimeError) as err:  # torch's zip writer reports the EFBIG as either
    print("failed as expected:", type(err).__name__)
"""


def test_a_checkpoint_write_that_fails_leaves_the_previous_intact(tmp_path: Path) -> None:
    """A write that dies midway (a full disk, provoked with RLIMIT_FSIZE) must not truncate last.ckpt."""
    from north_lightning.modules.checkpoint_io import AtomicCheckpointIO

    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 8, "w": torch.ones(4)}, last)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", _WRITE_PAST_LIMIT, str(last)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert "failed as expected" in run.stdout, run.stdout + run.stderr
    assert AtomicCheckpointIO().load_checkpoint(last)["step"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_a_truncated_last_ckpt_says_so_and_offers_the_previous(tmp_path: Path) -> None:
    from north_lightning.modules.checkpoint_io import AtomicCheckpointIO, CorruptCheckpointError

    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 4, "w": torch.ones(1000)}, tmp_path / "epoch=0-step=4.ckpt")
    io.save_checkpoint({"step": 8, "w": torch.ones(1000)}, tmp_path / "last.ckpt")
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as err:
        io.load_checkpoint(tmp_path / "last.ckpt")
    assert f"{tmp_path / 'last.ckpt'}: corrupt or truncated" in str(err.value)
    assert f"--ckpt_path {tmp_path / 'epoch=0-step=4.ckpt'}" in str(err.value)


def _fit(root: Path, *extra: str) -> subprocess.CompletedProcess:
    override = root / "o.yaml"
    root.mkdir(parents=True, exist_ok=True)
    override.write_text(yaml.safe_dump({
        "trainer": {"default_root_dir": str(root), "max_steps": 1, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "checkpoints"), "save_last": True}}]},
        "model": {"init_args": {"warmup_steps": 1, "model": {"preset": "tiny", **SMALL}}},
        "data": {"init_args": {"seq_len": 320, "batch_size": 1}},
    }))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "north_lightning", "fit", "--config",
                           str(REPO / "configs" / "tiny" / "sft.yaml"), "--config", str(override), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=400, env=env)


@pytest.mark.slow
def test_ckpt_path_last_without_a_checkpoint_fails_unless_asked(tmp_path: Path) -> None:
    refused = _fit(tmp_path, "--ckpt_path", "last")
    assert refused.returncode == 2 and "--ckpt_path last: no last checkpoint in" in refused.stderr, refused.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing trained
    fresh = _fit(tmp_path, "--ckpt_path", "last_if_any")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
