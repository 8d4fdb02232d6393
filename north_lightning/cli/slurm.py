"""`python -m north_lightning slurm --config CFG --nodes N [--sampler-nodes M] [--out FILE]`.

Renders an sbatch script from the templates in `configs/slurm/`: `sft.sbatch.tmpl` for a plain multi-node
`fit`, `rl.sbatch.tmpl` (a heterogeneous job: trainer nodes + vLLM sampler nodes) when `--sampler-nodes` > 0.
The scripts rely on Lightning's SLURM environment (one `srun` task per GPU), on its SIGUSR1 auto-requeue
(`--signal=USR1@90` + `--requeue`: an hpc checkpoint is saved and the job requeued) and resume from the newest
checkpoint in the run directory. When the config's sampler callback says `engine_kwargs.weight_transfer: nccl`,
the sampler servers are started with `--weight-transfer-config '{"backend": "nccl"}'`. Rendering is plain text
substitution so the result can be read and edited before `sbatch`; every placeholder must be filled, so a
template edit that adds one fails loudly here.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "configs" / "slurm"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")

# NCCL / torch.distributed settings for InfiniBand clusters; each line says why it is there.
NCCL_ENV = """\
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}                     # WARN keeps logs short; INFO to debug topology
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1                  # a failed collective aborts instead of hanging
export TORCH_NCCL_DUMP_ON_TIMEOUT=1                       # flight-recorder dump when a collective times out
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}             # tolerate short IB hiccups on large jobs
export NCCL_CROSS_NIC=${NCCL_CROSS_NIC:-0}                # rails stay on their NIC (rail-optimised fabrics)
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-8}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # less fragmentation at 64K+
# export NCCL_SOCKET_IFNAME=ib0                           # set when the bootstrap interface is not found"""

# Newest of Lightning's hpc checkpoint (saved on SIGUSR1) and ModelCheckpoint's last.ckpt; sharded
# (ModelParallelStrategy) checkpoints are directories, hence -prune rather than -type f.
RESUME_FUNCTION = """\
latest_checkpoint() {
  find "$1" -maxdepth 6 \\( -name 'hpc_ckpt_*.ckpt' -o -name 'last*.ckpt' \\) -prune -printf '%T@ %p\\n' \\
    2> /dev/null | sort -n | tail -n 1 | cut -d' ' -f2-
}"""


def render_template(template: str, values: dict[str, str], name: str = "template") -> str:
    """Replace every `{{key}}`; an unknown placeholder or an unused value is an error naming it."""
    used: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{name}: placeholder {{{{{key}}}}} has no value")
        used.add(key)
        return values[key]

    text = _PLACEHOLDER.sub(substitute, template)
    unused = set(values) - used
    if unused:
        raise KeyError(f"{name}: values never used by the template: {sorted(unused)}")
    return text


def _trainer_config(config: Path) -> dict[str, Any]:
    """The config's `trainer` mapping ({} when it has none); a YAML syntax error names the file."""
    try:
        with config.open() as fh:  # a stream, so PyYAML's message names the file
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise SystemExit(f"{config}: not valid YAML: {exc}") from exc
    trainer = data.get("trainer") if isinstance(data, dict) else None
    return trainer if isinstance(trainer, dict) else {}


def _callback_init_args(config: Path) -> list[dict[str, Any]]:
    """The `init_args` mapping of each of the config's trainer callbacks that has one, in order."""
    callbacks = _trainer_config(config).get("callbacks")
    callbacks = callbacks if isinstance(callbacks, list) else []
    inits = [c.get("init_args") if isinstance(c, dict) else None for c in callbacks]
    return [init for init in inits if isinstance(init, dict)]


def _run_dir_from_config(config: Path) -> str:
    """`trainer.default_root_dir` of the config when set, else runs/<config stem>."""
    root = _trainer_config(config).get("default_root_dir")
    return str(root) if root else f"runs/{config.stem}"


def _weight_transfer_from_config(config: Path) -> str:
    """`engine_kwargs.weight_transfer` of the config's `engine: servers` sampler callback (`files` when unset)."""
    from north_lightning.rl.engines.weight_transfer import parse_weight_transfer

    for init in _callback_init_args(config):
        if init.get("engine") == "servers":
            kwargs = init.get("engine_kwargs") or {}
            try:
                parse_weight_transfer(kwargs.get("weight_transfer", "files"), kwargs.get("nccl"))
            except ValueError as exc:
                raise SystemExit(f"{config}: {exc}") from exc
            return kwargs.get("weight_transfer", "files")
    return "files"


def _placement_from_config(config: Path) -> Any:
    """The sampler callback's `placement` (rl/placement.py), or None."""
    from north_lightning.rl.placement import RLPlacement

    for init in _callback_init_args(config):
        if init.get("placement") is not None:
            try:
                return RLPlacement.from_dict(init["placement"])
            except (TypeError, ValueError) as exc:
                raise SystemExit(f"{config}: {exc}") from exc
    return None


def _sampler_parallel_args(placement: Any, gpus_per_node: int) -> str:
    """`vllm serve` flags of one sampler node: the placement's TP x DP (+ EP), context and KV budget; without a
    placement, TP over the node's GPUs."""
    if placement is None:
        return f"--tensor-parallel-size={gpus_per_node}"
    flags = [f"--tensor-parallel-size={placement.tensor_parallel_size}",
             f"--data-parallel-size={placement.data_parallel_size}",
             f"--max-model-len={placement.max_model_len}",
             f"--kv-cache-memory-bytes={int(placement.kv_cache_gib * 2**30)}"]
    if placement.expert_parallel:
        flags.append("--enable-expert-parallel")
    return " ".join(flags)


def _extra_sbatch(partition: str | None, account: str | None, qos: str | None) -> str:
    lines = [f"#SBATCH --{key}={value}" for key, value in
             (("partition", partition), ("account", account), ("qos", qos)) if value]
    return "\n".join(lines) if lines else "# (no partition/account/qos given)"


def render(args: argparse.Namespace) -> str:
    config = Path(args.config)
    if not config.is_file():
        raise SystemExit(f"--config {config}: no such file")
    placement = _placement_from_config(config)
    if args.sampler_nodes is None:
        args.sampler_nodes = placement.sampler_nodes if placement is not None else 0
    if args.nodes < 1 or args.gpus_per_node < 1 or args.sampler_nodes < 0:
        raise SystemExit("--nodes and --gpus-per-node must be >= 1, --sampler-nodes >= 0")
    if placement is not None and (placement.sampler_nodes, placement.gpus_per_node) != (args.sampler_nodes,
                                                                                         args.gpus_per_node):
        raise SystemExit(f"{config}: the sampler callback's placement says {placement.sampler_nodes} sampler node(s) "
                         f"x {placement.gpus_per_node} GPUs, the command line {args.sampler_nodes} x "
                         f"{args.gpus_per_node}: change one (`plan` checked the placement's numbers)")
    rl = args.sampler_nodes > 0
    run_dir = args.run_dir or _run_dir_from_config(config)
    if re.search(r"\s", run_dir):
        raise SystemExit(f"run dir {run_dir!r}: whitespace is not allowed (#SBATCH --output cannot quote it)")
    values = {
        "config": shlex.quote(str(config)),
        "nodes": str(args.nodes),
        "gpus_per_node": str(args.gpus_per_node),
        "cpus_per_task": str(args.cpus_per_task),
        "time": args.time,
        "signal_seconds": str(args.signal_seconds),
        "job_name": args.job_name or f"north-{config.stem}",
        "run_dir": run_dir,
        "extra_sbatch": _extra_sbatch(args.partition, args.account, args.qos),
        "nccl_env": NCCL_ENV,
        "resume_function": RESUME_FUNCTION,
        "python": args.python,
        "extra_args": " ".join(shlex.quote(a) for a in args.extra_args),
    }
    if rl:
        values |= {
            "sampler_nodes": str(args.sampler_nodes),
            "sampler_cpus": str(args.cpus_per_task * args.gpus_per_node),
            "sampler_model": shlex.quote(args.sampler_model) if args.sampler_model else
            '"${NORTH_INIT_MODEL:?export NORTH_INIT_MODEL=<HF dir of the starting policy>}"',
            "sampler_port": str(args.sampler_port),
            "sampler_wait_tries": str(args.sampler_wait_minutes * 6),
            "vllm": args.vllm,
            "sampler_args": " ".join(shlex.quote(a) for a in shlex.split(args.sampler_args)),
            "sampler_parallel_args": _sampler_parallel_args(placement, args.gpus_per_node),
            # the servers join trainer rank 0's NCCL groups only when started with this flag
            "weight_transfer_args": "--weight-transfer-config " + shlex.quote('{"backend": "nccl"}')
            if _weight_transfer_from_config(config) == "nccl" and "--weight-transfer-config" not in args.sampler_args
            else "",
        }
    name = "rl.sbatch.tmpl" if rl else "sft.sbatch.tmpl"
    template_path = Path(args.template) if args.template else TEMPLATE_DIR / name
    return render_template(template_path.read_text(), values, str(template_path))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m north_lightning slurm", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="LightningCLI YAML passed to `fit --config`")
    p.add_argument("--nodes", type=int, required=True, help="trainer nodes")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--sampler-nodes", type=int, default=None,
                   help="> 0 renders the RL heterogeneous job (default: the config's placement.sampler_nodes, else 0)")
    p.add_argument("--time", default="24:00:00", help="SLURM time limit")
    p.add_argument("--signal-seconds", type=int, default=90, help="SIGUSR1 this long before the limit")
    p.add_argument("--cpus-per-task", type=int, default=12)
    p.add_argument("--job-name")
    p.add_argument("--run-dir", help="default: trainer.default_root_dir of the config, else runs/<stem>")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--python", default="python", help="interpreter on the compute nodes")
    p.add_argument("--vllm", default="vllm", help="vllm executable on the sampler nodes")
    p.add_argument("--sampler-model", help="HF dir the vLLM servers start from (default: $NORTH_INIT_MODEL)")
    p.add_argument("--sampler-port", type=int, default=8000)
    p.add_argument("--sampler-wait-minutes", type=int, default=20)
    p.add_argument("--sampler-args", default="", help="extra `vllm serve` arguments, one quoted string")
    p.add_argument("--template", help="render this template instead of configs/slurm/*.sbatch.tmpl")
    p.add_argument("--out", help="write here instead of stdout")
    p.add_argument("extra_args", nargs="*", help="extra `fit` arguments (after --)")
    return p


def memory_check(args: argparse.Namespace) -> str:
    """One line from `plan` for this job's trainer nodes, so a job that cannot fit is caught before `sbatch`."""
    from north_lightning.cli import plan

    try:
        cfg = plan.load_model_config(args.config)
        found = plan.strategy_defaults(args.config)
        strategy = plan.Strategy(nodes=args.nodes, gpus_per_node=args.gpus_per_node, ep=found.get("ep", 1),
                                 seq_len=found.get("seq_len", 65536), act_ckpt=found.get("act_ckpt", True),
                                 head_chunk=cfg.head_chunk_size)
        total = plan.memory_plan(cfg, strategy)["total"]
    except (SystemExit, ValueError, TypeError) as exc:
        return f"memory plan: skipped ({exc})"
    verdict = "fits" if total <= strategy.gpu_gib else "DOES NOT FIT"
    line = (f"memory plan: ~{total:.0f} GiB per GPU of {strategy.gpu_gib:g} ({verdict}; seq_len={strategy.seq_len}, "
            f"ep={strategy.ep}); details: python -m north_lightning plan --config {args.config} --nodes {args.nodes}")
    placement = _placement_from_config(Path(args.config))
    if placement is not None:
        from north_lightning.cli.plan_rl import rl_plan

        refusals = rl_plan(cfg, strategy, placement)["refusals"]
        line += "\nRL placement: " + ("accepted" if not refusals else "REFUSED: " + "; ".join(refusals))
    return line


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    text = render(args)
    print(memory_check(args), file=sys.stderr)
    # SLURM opens --output before the script runs, so its directory must already exist.
    Path(args.run_dir or _run_dir_from_config(Path(args.config))).mkdir(parents=True, exist_ok=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}; submit with: sbatch {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
