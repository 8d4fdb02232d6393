"""The RL configs parse with LightningCLI, and the sampler callbacks swap by `class_path` alone."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _print_config(*configs: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "north_lightning", "fit", *[a for c in configs for a in ("--config", c)],
                          "--print_config"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return yaml.safe_load(out.stdout)


@pytest.mark.slow
def test_rl_configs_parse_and_callbacks_swap(tmp_path):
    big = _print_config("configs/north_mini_code/rl.yaml")
    sidecar = next(c for c in big["trainer"]["callbacks"] if c["class_path"].endswith("VLLMSidecar"))["init_args"]
    assert sidecar["groups_per_step"] * sidecar["group_size"] == 512
    assert sidecar["export_every_n_steps"] == 4 and sidecar["rollout"]["max_context"] == 131072
    assert {e["name"] for e in sidecar["envs"]} == {"terminal", "swe"}
    assert big["trainer"]["accumulate_grad_batches"] == big["data"]["init_args"]["micro_batches"]

    tiny = yaml.safe_load((REPO / "configs/tiny/rl.yaml").read_text())
    for cb in tiny["trainer"]["callbacks"]:
        if cb["class_path"].endswith("VLLMSidecar"):
            cb["class_path"] = "north_lightning.callbacks.vllm_sidecar.SyncRollouts"
    swapped = tmp_path / "sync.yaml"
    swapped.write_text(yaml.safe_dump(tiny))
    parsed = _print_config(str(swapped))
    sync = next(c for c in parsed["trainer"]["callbacks"] if c["class_path"].endswith("SyncRollouts"))
    assert sync["init_args"]["envs"][0]["name"] == "terminal"


@pytest.mark.slow
def test_short_demo_rl_overlay_keeps_the_loop_and_exports_at_least_twice():
    """`make demo`'s RL stage reads configs/tiny/demo/rl.yaml after configs/tiny/rl.yaml: the overlay replaces the
    callbacks list, so it must still hold the async sidecar, the HF export (the after-RL eval reads it) and the
    progress line, export weights into the engine at least twice, and leave the model and data as the full run's."""
    short = _print_config("configs/tiny/rl.yaml", "configs/tiny/demo/rl.yaml")
    full = yaml.safe_load((REPO / "configs/tiny/rl.yaml").read_text())  # as written (one CLI start is enough)
    names = [c["class_path"].rsplit(".", 1)[1] for c in short["trainer"]["callbacks"]]
    assert names == ["ModelCheckpoint", "VLLMSidecar", "HFExport", "ProgressLineCallback"]
    sidecar = short["trainer"]["callbacks"][1]["init_args"]
    full_sidecar = next(c for c in full["trainer"]["callbacks"] if c["class_path"].endswith("VLLMSidecar"))["init_args"]
    assert short["trainer"]["max_steps"] // sidecar["export_every_n_steps"] >= 2
    assert sidecar["rollout"] == full_sidecar["rollout"] and sidecar["engine_kwargs"] == full_sidecar["engine_kwargs"]
    assert sidecar["envs"][0]["harness"] == full_sidecar["envs"][0]["harness"] == "swe_agent"
    for key, value in full["model"]["init_args"].items():
        assert short["model"]["init_args"][key] == value, key
    assert short["data"]["init_args"]["row_tokens"] == full["data"]["init_args"]["row_tokens"]
    assert short["trainer"]["max_steps"] < full["trainer"]["max_steps"]
