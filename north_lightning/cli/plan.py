"""`python -m north_lightning plan --config CFG [--nodes N --gpus-per-node 8 --fsdp D --ep E --seq-len S --act-ckpt]`.

Per-GPU memory of a North training job *before* anyone queues it: parameters, gradients and AdamW state under
FSDP2 (+ expert parallelism), the bf16 all-gather working set, and activations for one packed sequence per GPU,
with and without per-block activation checkpointing (for an RL config, also the sampler side and the placement
verdict: `cli/plan_rl.py`; exit status 2 when that placement is refused). It then answers the question that matters for the 30B-A3B
recipe: does 64K / 128K fit on N nodes of 80 GB cards?

The parameter count is exact (tests check it against the real module); the activation figure is an analytic
estimate of what autograd saves (listed term by term below) plus a fixed reserve for the CUDA context, NCCL
buffers and allocator fragmentation, so treat a plan within ~10% of the card as "measure first".

Layout assumed (what `north_lightning.model.parallelize` builds): non-expert weights are FSDP-sharded over
`fsdp` ranks (replicated over world/fsdp, i.e. HSDP when fsdp < world); expert weights are split over `ep` ranks
(whole experts) and FSDP-sharded over the remaining world/ep ranks. Master weights, gradients (reduce in fp32)
and AdamW moments are fp32 and sharded; each block is all-gathered in bf16 just in time (two blocks in flight:
the current one and the prefetched next one).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from north_lightning.model.config import PRESETS, NorthConfig

GIB = 1024**3
BF16, FP32 = 2, 4
RESERVE_GIB = 5.0  # CUDA context (~0.6), NCCL buffers (~1-2), allocator fragmentation at long sequence lengths


@dataclass
class ParamCounts:
    """Parameters of a North model split the way they are sharded: `expert` (split over ep) vs everything else."""

    embedding: int
    attention: int
    dense_mlp: int
    router: int
    expert: int
    norms: int
    lm_head: int  # 0 when tied to the embedding
    active: int  # parameters one token touches: top-k of the experts, the rest in full

    @property
    def non_expert(self) -> int:
        return self.embedding + self.attention + self.dense_mlp + self.router + self.norms + self.lm_head

    @property
    def total(self) -> int:
        return self.non_expert + self.expert


def count_params(cfg: NorthConfig) -> ParamCounts:
    """Exact parameter count of `NorthForCausalLM(cfg)` (parallel attention+MLP block with one RMSNorm, no biases,
    bias-free router, SwiGLU experts with gate/up/down)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    per_attn = d * hd * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + cfg.num_attention_heads * hd * d
    n_moe = len(cfg.moe_layers)
    n_dense = cfg.num_hidden_layers - n_moe
    per_expert = 3 * d * cfg.expert_intermediate_size
    counts = ParamCounts(
        embedding=cfg.vocab_size * d,
        attention=per_attn * cfg.num_hidden_layers,
        dense_mlp=3 * d * cfg.dense_intermediate_size * n_dense,
        router=cfg.num_experts * d * n_moe,
        expert=per_expert * cfg.num_experts * n_moe,
        norms=d * (cfg.num_hidden_layers + 1),
        lm_head=0 if cfg.tie_word_embeddings else cfg.vocab_size * d,
        active=0,
    )
    # the embedding lookup touches one row per token but the (tied) head uses the whole matrix: count it once
    counts.active = counts.non_expert + per_expert * cfg.num_experts_per_tok * n_moe
    return counts


@dataclass
class Strategy:
    nodes: int = 1
    gpus_per_node: int = 8
    fsdp: int | None = None  # None: the whole world
    ep: int = 1
    seq_len: int = 65536
    micro_batch: int = 1  # packed sequences per GPU per step
    act_ckpt: bool = True
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy: sharded params, grads and AdamW state live in host RAM
    gpu_gib: float = 80.0
    head_chunk: int = 1024

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def _check(cfg: NorthConfig, s: Strategy) -> int:
    fsdp = s.fsdp or s.world
    for name, value in (("--nodes", s.nodes), ("--gpus-per-node", s.gpus_per_node), ("--ep", s.ep),
                        ("--fsdp", fsdp), ("--seq-len", s.seq_len), ("--micro-batch", s.micro_batch)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if s.gpu_gib <= 0:
        raise ValueError(f"--gpu-gib must be positive, got {s.gpu_gib:g}")
    if s.world % fsdp:
        raise ValueError(f"--fsdp {fsdp} must divide the world size {s.world}")
    if s.world % s.ep or cfg.num_experts % s.ep:
        raise ValueError(f"--ep {s.ep} must divide the world size {s.world} and num_experts {cfg.num_experts}")
    if s.cpu_offload and s.ep > 1:
        raise ValueError("--cpu-offload needs --ep 1: expert-parallel weights are not managed (nor offloaded) by FSDP")
    return fsdp


def block_activation_bytes(cfg: NorthConfig, tokens: int, moe: bool) -> float:
    """What autograd keeps for one transformer block's backward (bf16 unless noted), term by term."""
    d, hd, k = cfg.hidden_size, cfg.head_dim, cfg.num_experts_per_tok
    qkv = tokens * hd * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * BF16
    attn = (tokens * d * BF16 * 2  # block input (residual) + normed input
            + qkv + tokens * cfg.num_attention_heads * hd * BF16  # q,k,v (after RoPE) + attention output
            + tokens * cfg.num_attention_heads * FP32)  # softmax log-sum-exp (flash/flex)
    if not moe:
        f = cfg.dense_intermediate_size
        return attn + tokens * 3 * f * BF16  # gate, up, silu(gate)*up
    f = cfg.expert_intermediate_size
    routed = tokens * k
    mlp = (tokens * cfg.num_experts * FP32  # router logits
           + tokens * k * (FP32 + 8)  # top-k scores + indices
           + routed * d * BF16  # tokens gathered in expert order
           + routed * 3 * f * BF16  # gate, up, silu(gate)*up
           + routed * d * BF16)  # expert outputs before the weighted combine
    return attn + mlp


def memory_plan(cfg: NorthConfig, s: Strategy) -> dict[str, float]:
    """Per-GPU bytes (as GiB) of each component for strategy `s`."""
    fsdp = _check(cfg, s)
    p = count_params(cfg)
    expert_shards = s.world  # split over ep, FSDP over world/ep: every GPU holds 1/world of the experts
    sharded_params = p.non_expert / fsdp + p.expert / expert_shards
    n_moe = len(cfg.moe_layers)
    per_layer_dense = p.attention / cfg.num_hidden_layers + cfg.hidden_size
    per_moe_layer_local = p.expert / max(n_moe, 1) / s.ep + cfg.num_experts * cfg.hidden_size
    biggest_layer = per_layer_dense + max(per_moe_layer_local, 3 * cfg.hidden_size * cfg.dense_intermediate_size)
    embed_head = p.embedding + p.lm_head
    # two blocks gathered at once (current + prefetch), their bf16 grads before reduce-scatter, and the
    # embedding/head (gathered for the chunked head at the end of forward and start of backward)
    gathered = (2 * biggest_layer * 2 + embed_head * 2) * BF16

    tokens = s.seq_len * s.micro_batch
    layers = [(i in cfg.moe_layers) for i in range(cfg.num_hidden_layers)]
    if s.act_ckpt:  # keep each block's input; recompute one block at a time in backward
        saved = tokens * cfg.hidden_size * BF16 * cfg.num_hidden_layers
        peak_block = max(block_activation_bytes(cfg, tokens, moe) for moe in layers)
        activations = saved + peak_block * 2  # recomputed activations + their gradients in flight
    else:
        activations = sum(block_activation_bytes(cfg, tokens, moe) for moe in layers)
    # chunked head: one chunk of fp32 logits, its softmax and its gradient, plus the final hidden states
    head = s.head_chunk * cfg.vocab_size * FP32 * 3 + tokens * cfg.hidden_size * (BF16 + FP32)
    on_gpu = 0.0 if s.cpu_offload else 1.0
    plan = {
        "params_fp32_sharded": sharded_params * FP32 * on_gpu,
        "grads_fp32_sharded": sharded_params * FP32 * on_gpu,
        "adamw_fp32_sharded": sharded_params * 2 * FP32 * on_gpu,
        "gathered_bf16_working_set": gathered,
        "activations": activations,
        "head_chunk": head,
        "reserve": RESERVE_GIB * GIB,
    }
    plan = {key: value / GIB for key, value in plan.items()}
    plan["total"] = sum(plan.values())
    plan["host_ram_per_node_if_offloaded"] = sharded_params * 4 * FP32 * s.gpus_per_node / GIB if s.cpu_offload else 0.0
    return plan


def fits(cfg: NorthConfig, s: Strategy) -> bool:
    return memory_plan(cfg, s)["total"] <= s.gpu_gib


def min_nodes(cfg: NorthConfig, s: Strategy, max_nodes: int = 64) -> int | None:
    """Smallest node count (powers of two) at which `s` fits, or None."""
    nodes = 1
    while nodes <= max_nodes:
        trial = Strategy(**{**s.__dict__, "nodes": nodes, "fsdp": None})
        if trial.world % trial.ep == 0 and fits(cfg, trial):
            return nodes
        nodes *= 2
    return None


def _find_model_config(node: Any) -> dict[str, Any] | None:
    """The mapping that names the model in a YAML: `preset: <name>` (+ NorthConfig fields), or SFTModule-style
    `model: <preset>` (+ `config_overrides`), anywhere in the tree (e.g. model.init_args)."""
    if isinstance(node, dict):
        if isinstance(node.get("preset"), str) and node["preset"] in PRESETS:
            return node
        if isinstance(node.get("model"), str) and node["model"] in PRESETS:
            return {"preset": node["model"], **(node.get("config_overrides") or {})}
        for value in node.values():
            found = _find_model_config(value)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _find_model_config(value)
            if found is not None:
                return found
    return None


def _read_yaml(file: Path) -> Any:
    try:
        with file.open() as fh:  # a stream, so PyYAML's message names the file
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise SystemExit(f"{file}: not valid YAML: {exc}") from exc


def load_model_config(path: str) -> NorthConfig:
    """NorthConfig from a preset name, an HF config.json, or a (LightningCLI) YAML naming a preset."""
    if path in PRESETS:
        return NorthConfig.preset(path)
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--config {path}: neither a file nor a preset ({sorted(PRESETS)})")
    if file.suffix == ".json":
        return NorthConfig.from_hf_dict(json.loads(file.read_text()))
    node = _find_model_config(_read_yaml(file))
    if node is None:
        raise SystemExit(f"{path}: no `preset: <name>` or `model: <name>` with a preset in {sorted(PRESETS)} found")
    fields = set(NorthConfig.__dataclass_fields__)
    overrides = {k: v for k, v in node.items() if k in fields}
    return NorthConfig.preset(node["preset"], **overrides)


def strategy_defaults(path: str) -> dict[str, Any]:
    """Defaults read from a LightningCLI YAML: nodes/devices, EP degree and activation checkpointing of
    NorthParallelStrategy, the datamodule's seq_len. Command-line flags override them."""
    file = Path(path)
    if path in PRESETS or not file.is_file() or file.suffix == ".json":
        return {}
    data = _read_yaml(file) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a YAML mapping (a LightningCLI config)")
    trainer = data.get("trainer") or {}
    found: dict[str, Any] = {}
    if isinstance(trainer.get("num_nodes"), int):
        found["nodes"] = trainer["num_nodes"]
    if isinstance(trainer.get("devices"), int):
        found["gpus_per_node"] = trainer["devices"]
    strategy = trainer.get("strategy")
    init = strategy.get("init_args", {}) if isinstance(strategy, dict) else {}
    if "expert_parallel_size" in init:
        found["ep"] = int(init["expert_parallel_size"])
    if "activation_checkpointing" in init:
        found["act_ckpt"] = bool(init["activation_checkpointing"])
    if init.get("cpu_offload"):
        found["cpu_offload"] = True
    data_args = (data.get("data") or {}).get("init_args") or {}
    if isinstance(data_args.get("seq_len"), int):
        found["seq_len"] = data_args["seq_len"]
    elif isinstance(data_args.get("row_tokens"), int):  # the RL datamodule packs rollouts into rows of this length
        found["seq_len"] = data_args["row_tokens"]
    return found


def format_plan(cfg: NorthConfig, s: Strategy) -> str:
    p = count_params(cfg)
    fsdp = s.fsdp or s.world
    lines = [
        f"model: {p.total / 1e9:.2f}B parameters ({p.expert / 1e9:.2f}B in experts), {p.active / 1e9:.2f}B active",
        f"strategy: {s.nodes} node(s) x {s.gpus_per_node} GPU = {s.world}, fsdp={fsdp} ep={s.ep}, "
        f"seq_len={s.seq_len} x micro_batch={s.micro_batch}, act_ckpt={s.act_ckpt}, {s.gpu_gib:g} GiB cards",
        "per-GPU memory (GiB):",
    ]
    plan = memory_plan(cfg, s)
    lines += [f"  {key:<31} {value:8.2f}" for key, value in plan.items() if key != "host_ram_per_node_if_offloaded"]
    if s.cpu_offload:
        lines.append(f"  host RAM per node (offloaded state): {plan['host_ram_per_node_if_offloaded']:.0f} GiB")
    verdict = "FITS" if plan["total"] <= s.gpu_gib else "DOES NOT FIT"
    lines.append(f"verdict: {verdict} ({plan['total']:.1f} of {s.gpu_gib:g} GiB)")
    for seq_len in (65536, 131072):
        need = min_nodes(cfg, Strategy(**{**s.__dict__, "seq_len": seq_len}))
        where = f"{need} node(s)" if need else "no node count <= 64"
        at_n = "fits" if fits(cfg, Strategy(**{**s.__dict__, "seq_len": seq_len})) else "does not fit"
        lines.append(f"seq_len {seq_len}: {at_n} on {s.nodes} node(s); smallest fitting: {where} "
                     f"(ep={s.ep}, act_ckpt={s.act_ckpt})")
    lines.append(f"total_gib={plan['total']:.2f} fits={int(plan['total'] <= s.gpu_gib)} params={p.total} "
                 f"active_params={p.active}")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m north_lightning plan", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="preset name, HF config.json, or YAML with `preset:`")
    ap.add_argument("--nodes", type=_positive_int, help="default: trainer.num_nodes of the YAML, else 1")
    ap.add_argument("--gpus-per-node", type=_positive_int, help="default: trainer.devices of the YAML, else 8")
    ap.add_argument("--fsdp", type=_positive_int, help="FSDP shard degree for non-expert weights (default: world)")
    ap.add_argument("--ep", type=_positive_int, help="expert-parallel degree (default: the strategy's, else 8)")
    ap.add_argument("--seq-len", type=_positive_int, help="default: data.init_args.seq_len of the YAML, else 65536")
    ap.add_argument("--micro-batch", type=_positive_int, default=1)
    ap.add_argument("--act-ckpt", action=argparse.BooleanOptionalAction, default=None,
                    help="default: the strategy's activation_checkpointing, else on")
    ap.add_argument("--cpu-offload", action=argparse.BooleanOptionalAction, default=None,
                    help="FSDP2 CPU offload of params/grads/AdamW (ep 1); default: the strategy's cpu_offload")
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    args = ap.parse_args(argv)
    defaults = {"nodes": 1, "gpus_per_node": 8, "ep": 8, "seq_len": 65536, "act_ckpt": True, "cpu_offload": False,
                **strategy_defaults(args.config)}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cfg = load_model_config(args.config)
    strategy = Strategy(nodes=args.nodes, gpus_per_node=args.gpus_per_node, fsdp=args.fsdp, ep=args.ep,
                        seq_len=args.seq_len, micro_batch=args.micro_batch, act_ckpt=args.act_ckpt,
                        gpu_gib=args.gpu_gib, head_chunk=cfg.head_chunk_size, cpu_offload=args.cpu_offload)
    try:
        print(format_plan(cfg, strategy))
        placement = rl_placement(args.config)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if placement is None:
        return 0
    from north_lightning.cli.plan_rl import format_rl_plan, rl_plan

    print(format_rl_plan(cfg, strategy, placement))
    return 2 if rl_plan(cfg, strategy, placement)["refusals"] else 0


def rl_placement(path: str) -> Any:
    """The RL placement of a training YAML whose callbacks hold a sampler callback (else None)."""
    file = Path(path)
    if path in PRESETS or not file.is_file() or file.suffix == ".json":
        return None
    from north_lightning.cli.plan_rl import placement_from_yaml

    return placement_from_yaml(yaml.safe_load(file.read_text()) or {})
