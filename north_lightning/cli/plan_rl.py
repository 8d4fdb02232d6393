"""The RL half of `plan`: per-GPU memory of the trainer nodes and of the sampler nodes, and a verdict that refuses
a placement that cannot fit, with the reasons.

Trainer side: `plan.memory_plan` (FSDP2 + EP, activations of one `row_tokens` row) plus the export: the sending
rank gathers one bucket of full tensors at a time in the engine's dtype and keeps at most two alive (the one being
sent and the next), so every rank's budget gets 2 x `export_bucket_mb` (any rank may be the sender's peer of a
bucket's gather). Sampler side, per GPU of one `vllm serve` replica (tensor parallel `tp`, `dp` replicas per node):
- weights in bf16: non-expert weights split over `tp` (vocab-parallel embedding, head-parallel attention); experts
  over `tp x dp` GPUs with expert parallelism, else over `tp` in every replica;
- the KV cache (`kv_cache_gib`, vLLM's per-GPU budget); the planner also says how many `max_model_len` sequences it
  holds (KV heads split over `tp`, replicated below one head per GPU; sliding-window layers keep only their window,
  as vLLM's hybrid KV-cache manager does) and refuses a cache that cannot hold one;
- one received export bucket, and a reserve for the CUDA context, CUDA graphs, NCCL and sampling buffers.

Colocated (no sampler nodes): without sleep/wake the engine's weights and KV stay on the trainer's GPUs while it
steps, so both totals add up; with sleep/wake two phases are checked: stepping (the trainer's whole plan + the
sleeping engine's residue) and sampling (the engine's whole plan + the trainer's resident sharded state).
"""

from __future__ import annotations

from typing import Any

from north_lightning.cli.plan import BF16, GIB, Strategy, count_params, memory_plan
from north_lightning.model.config import NorthConfig
from north_lightning.rl.placement import RLPlacement

SAMPLER_RESERVE_GIB = 4.0  # CUDA context, CUDA graphs, NCCL, sampler/logprob buffers of one vLLM worker
ASLEEP_RESIDUE_GIB = 1.5  # what a sleeping vLLM worker keeps (context, graph pool)


def kv_bytes_per_sequence(cfg: NorthConfig, p: RLPlacement) -> float:
    """Bytes of KV cache one `max_model_len` sequence takes on one sampler GPU (bf16 K and V)."""
    heads_per_gpu = max(1, -(-cfg.num_key_value_heads // p.tensor_parallel_size))
    per_token_layer = 2 * heads_per_gpu * cfg.head_dim * BF16
    total = 0.0
    for layer in range(cfg.num_hidden_layers):
        window = cfg.attention_window(layer)
        tokens = p.max_model_len if window is None else min(p.max_model_len, window + 1)
        total += tokens * per_token_layer
    return total


def sampler_plan(cfg: NorthConfig, p: RLPlacement) -> dict[str, float]:
    """Per-GPU GiB of one sampler GPU."""
    counts = count_params(cfg)
    expert_split = p.tensor_parallel_size * (p.data_parallel_size if p.expert_parallel else 1)
    weights = (counts.non_expert / p.tensor_parallel_size + counts.expert / expert_split) * BF16
    plan = {"weights_bf16": weights / GIB, "kv_cache": p.kv_cache_gib,
            "export_bucket_received": p.export_bucket_mb * 2**20 / GIB, "reserve": SAMPLER_RESERVE_GIB}
    plan["total"] = sum(plan.values())
    return plan


def trainer_plan(cfg: NorthConfig, s: Strategy, p: RLPlacement) -> dict[str, float]:
    plan = memory_plan(cfg, s)
    host = plan.pop("host_ram_per_node_if_offloaded")
    total = plan.pop("total")
    plan["export_buckets"] = 2 * p.export_bucket_mb * 2**20 / GIB
    plan["total"] = total + plan["export_buckets"]
    plan["host_ram_per_node_if_offloaded"] = host
    return plan


def rl_plan(cfg: NorthConfig, s: Strategy, p: RLPlacement) -> dict[str, Any]:
    """Both sides' plans, the colocated phases, and `refusals` (empty when the placement fits)."""
    trainer, sampler = trainer_plan(cfg, s, p), sampler_plan(cfg, p)
    refusals: list[str] = []
    per_seq = kv_bytes_per_sequence(cfg, p)
    sequences = p.kv_cache_gib * GIB / per_seq
    if cfg.num_attention_heads % p.tensor_parallel_size:
        refusals.append(f"sampler: tensor_parallel_size={p.tensor_parallel_size} does not divide the "
                        f"{cfg.num_attention_heads} attention heads")
    if p.expert_parallel and cfg.num_experts % (p.tensor_parallel_size * p.data_parallel_size):
        refusals.append(f"sampler: expert parallelism over {p.tensor_parallel_size * p.data_parallel_size} GPUs does "
                        f"not divide {cfg.num_experts} experts")
    if sequences < 1:
        refusals.append(f"sampler: kv_cache_gib={p.kv_cache_gib:g} per GPU holds {sequences:.2f} sequence of "
                        f"max_model_len={p.max_model_len} ({per_seq / GIB:.2f} GiB each)")
    phases: dict[str, float] = {}
    if p.colocated:
        if s.gpus_per_node != p.gpus_per_node:
            refusals.append(f"colocated: the engine's gpus_per_node={p.gpus_per_node} differs from the trainer's "
                            f"{s.gpus_per_node}")
        if p.sleep_wake:
            resident = (trainer["params_fp32_sharded"] + trainer["adamw_fp32_sharded"] + trainer["reserve"])
            phases = {"train_phase": trainer["total"] + ASLEEP_RESIDUE_GIB, "sample_phase": sampler["total"] + resident}
            for phase, need in phases.items():
                if need > p.gpu_gib:
                    refusals.append(f"colocated with sleep/wake: the {phase.replace('_', ' ')} needs {need:.1f} GiB "
                                    f"per GPU > {p.gpu_gib:g}")
        else:
            phases = {"train_and_sample": trainer["total"] + sampler["total"]}
            if phases["train_and_sample"] > p.gpu_gib:
                refusals.append(
                    f"colocated without sleep/wake: the engine's weights and KV cache ({sampler['total']:.1f} GiB) stay "
                    f"on the trainer's GPUs while it steps ({trainer['total']:.1f} GiB): "
                    f"{phases['train_and_sample']:.1f} GiB per GPU > {p.gpu_gib:g}; put the sampler on its own nodes "
                    "(placement.sampler_nodes) or enable placement.sleep_wake")
    else:
        if trainer["total"] > s.gpu_gib:
            refusals.append(f"trainer: {trainer['total']:.1f} GiB per GPU > {s.gpu_gib:g} (more trainer nodes, "
                            "cpu_offload, or shorter rows)")
        if sampler["total"] > p.gpu_gib:
            refusals.append(f"sampler: {sampler['total']:.1f} GiB per GPU > {p.gpu_gib:g} (smaller kv_cache_gib or "
                            "a larger tensor_parallel_size)")
    return {"trainer": trainer, "sampler": sampler, "phases": phases, "kv_sequences_per_gpu": sequences,
            "kv_gib_per_sequence": per_seq / GIB, "refusals": refusals}


def format_rl_plan(cfg: NorthConfig, s: Strategy, p: RLPlacement) -> str:
    result = rl_plan(cfg, s, p)
    where = "colocated on the trainer's GPUs" if p.colocated else f"{p.sampler_nodes} sampler node(s)"
    lines = [
        f"RL placement: trainer {s.nodes} node(s) x {s.gpus_per_node} GPU (fsdp={s.fsdp or s.world} ep={s.ep}, "
        f"rows of {s.seq_len} tokens, cpu_offload={s.cpu_offload}); sampler {where}: vllm serve per node, "
        f"tp={p.tensor_parallel_size} x dp={p.data_parallel_size}, expert_parallel={p.expert_parallel}, "
        f"max_model_len={p.max_model_len}, sleep_wake={p.sleep_wake}",
        "trainer per-GPU memory (GiB):",
    ]
    lines += [f"  {k:<31} {v:8.2f}" for k, v in result["trainer"].items() if k != "host_ram_per_node_if_offloaded"]
    lines.append("sampler per-GPU memory (GiB):")
    lines += [f"  {k:<31} {v:8.2f}" for k, v in result["sampler"].items()]
    lines.append(f"  KV cache holds {result['kv_sequences_per_gpu']:.1f} sequences of {p.max_model_len} tokens "
                 f"({result['kv_gib_per_sequence']:.2f} GiB each) per replica")
    for phase, need in result["phases"].items():
        lines.append(f"  colocated {phase}: {need:.2f} GiB per GPU")
    if result["refusals"]:
        lines.append("RL verdict: REFUSED")
        lines += [f"  - {reason}" for reason in result["refusals"]]
    else:
        lines.append("RL verdict: ACCEPTED")
    lines.append(f"rl_fits={int(not result['refusals'])} trainer_gib={result['trainer']['total']:.2f} "
                 f"sampler_gib={result['sampler']['total']:.2f} kv_sequences={result['kv_sequences_per_gpu']:.1f}")
    return "\n".join(lines)


def placement_from_yaml(data: dict[str, Any]) -> RLPlacement | None:
    """The placement of the config's sampler callback (VLLMSidecar / SyncRollouts); None without one. A callback
    without `placement` whose engine is `inprocess` / `subprocess` runs on the trainer's GPUs: it is read as a
    colocated placement from its `engine_kwargs` (max_model_len, kv_cache_bytes, tensor_parallel_size), no sleep/wake."""
    trainer = data.get("trainer") or {}
    for cb in (trainer.get("callbacks") or []):
        if not (isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(("VLLMSidecar", "SyncRollouts"))):
            continue
        args = cb.get("init_args") or {}
        if args.get("placement") is not None:
            return RLPlacement.from_dict(args["placement"])
        if args.get("engine", "inprocess") == "servers":
            raise ValueError("the sampler callback has engine: servers but no `placement` (sampler_nodes, "
                             "tensor_parallel_size, kv_cache_gib, ...): the planner cannot size the sampler nodes")
        kwargs = args.get("engine_kwargs") or {}
        inner = kwargs.get("engine_kwargs") or {}
        gpus = trainer.get("devices") if isinstance(trainer.get("devices"), int) else 8
        return RLPlacement(sampler_nodes=0, gpus_per_node=gpus,
                           tensor_parallel_size=int(inner.get("tensor_parallel_size", 1)),
                           max_model_len=int(kwargs.get("max_model_len", 4096)),
                           kv_cache_gib=float(kwargs.get("kv_cache_bytes", 512 * 2**20)) / GIB)
    return None
