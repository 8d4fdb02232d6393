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


# ---- RL placement (cli/plan_rl.py) -------------------------------------------------------------------------
def _rl_yaml(tmp_path, *, nodes: int, sidecar: str) -> str:
    path = tmp_path / "rl.yaml"
    path.write_text(
        f"trainer:\n  num_nodes: {nodes}\n  devices: 8\n  strategy:\n"
        "    class_path: north_lightning.modules.strategy.NorthParallelStrategy\n"
        "    init_args: {expert_parallel_size: 8, activation_checkpointing: true}\n"
        "  callbacks:\n    - class_path: north_lightning.callbacks.vllm_sidecar.VLLMSidecar\n"
        f"      init_args: {sidecar}\n"
        "model:\n  init_args: {model: north_mini_code_30b}\n"
        "data:\n  init_args: {row_tokens: 131072}\n")
    return str(path)


def test_the_30b_rl_config_is_accepted_with_both_sides_planned(capsys) -> None:
    assert plan.main(["--config", "configs/north_mini_code/rl.yaml"]) == 0
    out = capsys.readouterr().out
    assert "RL verdict: ACCEPTED" in out and "sampler per-GPU memory" in out and "export_buckets" in out
    last = dict(pair.split("=") for pair in out.strip().splitlines()[-1].split())
    assert int(last["rl_fits"]) == 1 and float(last["trainer_gib"]) <= 80 and float(last["sampler_gib"]) <= 80
    assert float(last["kv_sequences"]) >= 16  # 128 episodes over 8 replicas


def test_the_old_colocated_placement_is_refused_with_its_reason(tmp_path, capsys) -> None:
    """The recipe before this change: a TP=8 engine with a 64 GiB KV cache on the trainer's own 8 GPUs."""
    old = _rl_yaml(tmp_path, nodes=1, sidecar="{engine: subprocess, engine_kwargs: {max_model_len: 131072, "
                   "kv_cache_bytes: 68719476736, engine_kwargs: {tensor_parallel_size: 8}}}")
    assert plan.main(["--config", old]) == 2
    out = capsys.readouterr().out
    assert "RL verdict: REFUSED" in out
    assert "colocated without sleep/wake: the engine's weights and KV cache (76.1 GiB) stay on the trainer's GPUs" in out


def test_colocated_sleep_wake_is_accounted_in_two_phases() -> None:
    from north_lightning.cli.plan_rl import ASLEEP_RESIDUE_GIB, rl_plan
    from north_lightning.rl.placement import RLPlacement

    cfg = NorthConfig.preset("north_mini_code_30b")
    trainer = plan.Strategy(nodes=8, ep=8, seq_len=131072)
    awake = RLPlacement(sampler_nodes=0, tensor_parallel_size=4, kv_cache_gib=48)
    asleep = RLPlacement(sampler_nodes=0, tensor_parallel_size=4, kv_cache_gib=48, sleep_wake=True)
    refused, accepted = rl_plan(cfg, trainer, awake), rl_plan(cfg, trainer, asleep)
    assert refused["refusals"] and "sleep" in refused["refusals"][0]
    assert accepted["refusals"] == []
    t, s = accepted["trainer"], accepted["sampler"]
    assert accepted["phases"]["train_phase"] == t["total"] + ASLEEP_RESIDUE_GIB
    assert accepted["phases"]["sample_phase"] == s["total"] + t["params_fp32_sharded"] + t["adamw_fp32_sharded"] + t["reserve"]
    # more KV than the sampling phase leaves room for: refused, naming the phase
    greedy = rl_plan(cfg, trainer, RLPlacement(sampler_nodes=0, tensor_parallel_size=4, kv_cache_gib=70, sleep_wake=True))
    assert any("sample phase" in r for r in greedy["refusals"])


def test_disaggregated_refusals_name_the_side() -> None:
    from north_lightning.cli.plan_rl import rl_plan
    from north_lightning.rl.placement import RLPlacement

    cfg = NorthConfig.preset("north_mini_code_30b")
    fits = RLPlacement(sampler_nodes=2, tensor_parallel_size=8, kv_cache_gib=40)
    assert rl_plan(cfg, plan.Strategy(nodes=8, ep=8, seq_len=131072), fits)["refusals"] == []
    small_trainer = rl_plan(cfg, plan.Strategy(nodes=2, ep=8, seq_len=131072), fits)["refusals"]
    assert len(small_trainer) == 1 and small_trainer[0].startswith("trainer:")
    big_kv = rl_plan(cfg, plan.Strategy(nodes=8, ep=8, seq_len=131072),
                     RLPlacement(sampler_nodes=2, tensor_parallel_size=1, kv_cache_gib=30))["refusals"]
    assert any(r.startswith("sampler:") and "GiB per GPU" in r for r in big_kv)  # 57 GiB of bf16 weights + 30 KV
    tiny_kv = rl_plan(cfg, plan.Strategy(nodes=8, ep=8, seq_len=131072),
                      RLPlacement(sampler_nodes=2, tensor_parallel_size=8, kv_cache_gib=0.5))["refusals"]
    assert any("holds 0.57 sequence" in r for r in tiny_kv)
    odd_tp = rl_plan(cfg, plan.Strategy(nodes=8, ep=8, seq_len=131072),
                     RLPlacement(sampler_nodes=2, gpus_per_node=6, tensor_parallel_size=3))["refusals"]
    assert any("does not divide the 32 attention heads" in r for r in odd_tp)
    import pytest

    with pytest.raises(ValueError, match="must divide gpus_per_node"):
        RLPlacement(sampler_nodes=1, tensor_parallel_size=3)
    with pytest.raises(ValueError, match="unknown keys"):
        RLPlacement.from_dict({"sampler_node": 2})


def test_kv_per_sequence_counts_sliding_layers_at_their_window() -> None:
    from north_lightning.cli.plan_rl import kv_bytes_per_sequence
    from north_lightning.rl.placement import RLPlacement

    cfg = NorthConfig.preset("north_mini_code_30b")
    full = sum(cfg.attention_window(i) is None for i in range(cfg.num_hidden_layers))
    per = kv_bytes_per_sequence(cfg, RLPlacement(tensor_parallel_size=4, max_model_len=131072))
    # 4 KV heads over TP=4: one per GPU, K and V in bf16
    assert per == 2 * 128 * 2 * (full * 131072 + (cfg.num_hidden_layers - full) * (cfg.sliding_window + 1))


def test_the_sidecar_refuses_a_placement_it_cannot_run() -> None:
    import pytest

    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar

    envs = [{"name": "terminal", "tasks": "toy:train:4:0", "harness": "swe_agent"}]
    with pytest.raises(ValueError, match="needs engine: servers"):
        VLLMSidecar(envs=envs, engine="subprocess", placement={"sampler_nodes": 2})
    with pytest.raises(ValueError, match="does not put the engine to sleep"):
        VLLMSidecar(envs=envs, engine="subprocess", placement={"sampler_nodes": 0, "sleep_wake": True})
    ok = VLLMSidecar(envs=envs, engine="servers", placement={"sampler_nodes": 2})
    assert ok.placement.sampler_nodes == 2 and ok.placement.export_bucket_mb == 1024
