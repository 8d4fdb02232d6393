"""Memory plan: the parameter count is the real module's, and the verdicts move the right way."""

from __future__ import annotations

import torch

from north_lightning.cli import plan
from north_lightning.model import NorthConfig, NorthForCausalLM


def _real_counts(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    return total, expert


def test_tiny_param_count_is_exact() -> None:
    cfg = NorthConfig.preset("tiny")
    counts = plan.count_params(cfg)
    assert (counts.total, counts.expert) == _real_counts(NorthForCausalLM(cfg))


def test_30b_param_count_is_exact_on_meta() -> None:
    cfg = NorthConfig.preset("north_mini_code_30b")
    with torch.device("meta"):
        model = NorthForCausalLM(cfg)
    counts = plan.count_params(cfg)
    assert (counts.total, counts.expert) == _real_counts(model)
    assert 29e9 < counts.total < 32e9  # "30B"
    assert 2.8e9 < counts.active < 3.6e9  # "A3B"


def test_plan_verdicts(capsys) -> None:
    cfg = NorthConfig.preset("north_mini_code_30b")
    one = plan.memory_plan(cfg, plan.Strategy(nodes=1, ep=8, seq_len=65536))
    two = plan.memory_plan(cfg, plan.Strategy(nodes=2, ep=8, seq_len=65536))
    assert two["adamw_fp32_sharded"] == one["adamw_fp32_sharded"] / 2  # sharded state halves with 2x GPUs
    assert two["activations"] == one["activations"]  # activations do not shard (no context parallelism)
    long_ = plan.memory_plan(cfg, plan.Strategy(nodes=2, ep=8, seq_len=131072))
    assert long_["activations"] > 1.9 * two["activations"]
    no_ckpt = plan.memory_plan(cfg, plan.Strategy(nodes=2, ep=8, act_ckpt=False))
    assert no_ckpt["activations"] > 5 * two["activations"]
    assert plan.min_nodes(cfg, plan.Strategy(ep=8, seq_len=65536)) <= plan.min_nodes(
        cfg, plan.Strategy(ep=8, seq_len=131072))
    assert plan.main(["--config", "north_mini_code_30b", "--nodes", "4", "--seq-len", "131072"]) == 0
    out = capsys.readouterr().out
    assert "seq_len 65536:" in out and "seq_len 131072:" in out
    last = dict(pair.split("=") for pair in out.strip().splitlines()[-1].split())
    assert int(last["params"]) == plan.count_params(cfg).total


def test_plan_reads_yaml_preset(tmp_path) -> None:
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text("model:\n  init_args:\n    model_config:\n      preset: tiny\n      num_hidden_layers: 4\n")
    cfg = plan.load_model_config(str(cfg_file))
    assert cfg.num_hidden_layers == 4 and cfg.vocab_size == 4096


def test_plan_reads_strategy_and_seq_len_from_a_training_yaml(tmp_path, capsys) -> None:
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(
        "trainer:\n  num_nodes: 2\n  devices: 8\n  strategy:\n"
        "    class_path: north_lightning.modules.strategy.NorthParallelStrategy\n"
        "    init_args: {expert_parallel_size: 4, activation_checkpointing: false}\n"
        "model:\n  class_path: north_lightning.modules.SFTModule\n"
        "  init_args: {model: north_mini_code_30b, config_overrides: {num_hidden_layers: 9}}\n"
        "data:\n  init_args: {seq_len: 32768}\n")
    assert plan.load_model_config(str(cfg_file)).num_hidden_layers == 9
    assert plan.strategy_defaults(str(cfg_file)) == {"nodes": 2, "gpus_per_node": 8, "ep": 4, "act_ckpt": False,
                                                     "seq_len": 32768}
    assert plan.main(["--config", str(cfg_file), "--seq-len", "1024"]) == 0
    out = capsys.readouterr().out
    assert "2 node(s) x 8 GPU = 16, fsdp=16 ep=4, seq_len=1024" in out and "act_ckpt=False" in out


def test_cpu_offload_moves_sharded_state_to_host() -> None:
    cfg = NorthConfig.preset("north_mini_code_30b")
    resident = plan.memory_plan(cfg, plan.Strategy(nodes=1, ep=1))
    offloaded = plan.memory_plan(cfg, plan.Strategy(nodes=1, ep=1, cpu_offload=True))
    assert offloaded["adamw_fp32_sharded"] == 0 and resident["adamw_fp32_sharded"] > 20
    assert offloaded["host_ram_per_node_if_offloaded"] == (
        resident["params_fp32_sharded"] + resident["grads_fp32_sharded"] + resident["adamw_fp32_sharded"]) * 8
    import pytest

    with pytest.raises(ValueError, match="ep 1"):
        plan.memory_plan(cfg, plan.Strategy(nodes=1, ep=8, cpu_offload=True))
    from north_lightning.modules.strategy import NorthParallelStrategy

    with pytest.raises(ValueError, match="cpu_offload"):
        NorthParallelStrategy(expert_parallel_size=8, cpu_offload=True)
