"""`python -m north_lightning <subcommand>`.

`fit` / `validate` / `test` / `predict` go to LightningCLI; every other subcommand is one plain function
in `north_lightning/cli/<name>.py` exposing `main(argv: list[str]) -> int`. Modules are imported lazily
so `python -m north_lightning tasks verify` does not pay for importing Lightning or vLLM.
"""

from __future__ import annotations

import importlib
import sys

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("north_lightning.cli.convert", "convert between a Lightning checkpoint and an HF directory"),
    "data": ("north_lightning.cli.data", "SFT data tools: `data import --format F SRC --out DIR`, "
             "`data prepare | report --config ...`, `data inspect SHARD --row N`"),
    "tasks": ("north_lightning.cli.tasks", "task tools: `tasks verify DIR [--oracle]`, `tasks filter`"),
    "eval": ("north_lightning.cli.eval", "pass@k evaluation of a model on tasks"),
    "synth": ("north_lightning.cli.synth", "synthetic SFT records from a teacher's verified rollouts"),
    "humaneval": ("north_lightning.cli.humaneval", "blind pairwise human evaluation: generate | serve | "
                  "add-annotator | report"),
    "report": ("north_lightning.cli.report", "plots from a run directory"),
    "slurm": ("north_lightning.cli.slurm", "render sbatch scripts for a config"),
    "plan": ("north_lightning.cli.plan", "per-GPU memory plan for a config and strategy"),
}


def _usage() -> str:
    lines = ["usage: python -m north_lightning <subcommand> [args]", "", "subcommands:"]
    lines += [f"  {name:<9} LightningCLI {name} --config ..." for name in LIGHTNING_SUBCOMMANDS]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in LIGHTNING_SUBCOMMANDS:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from north_lightning.cli.lightning_cli import run_lightning_cli

        try:
            return run_lightning_cli([name, *rest])
        except SIGTERMException:
            # Lightning already ran the graceful path (callbacks' on_exception: ledger, engine and containers
            # closed). Its SystemExit carries no code, i.e. 0, which SLURM would record as COMPLETED.
            print("north_lightning: stopped by SIGTERM (graceful shutdown done); exit 143", file=sys.stderr)
            return SIGTERM_EXIT_CODE
    if name not in SUBCOMMANDS:
        print(f"unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
