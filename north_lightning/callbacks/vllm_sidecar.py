"""Sampler callbacks: `VLLMSidecar` (asynchronous RL) and `SyncRollouts` (on-policy baseline).

Both start a vLLM engine next to the trainer, run the rollout service (`rl/sampler.py`) on rank 0, and export
the trainer's weights into the engine; they differ only in the schedule, so they swap in YAML by `class_path`.

Export is keyed on `trainer.global_step` (optimizer steps), never on batch count: under gradient accumulation
Lightning's batch hooks fire once per micro-batch. Every `export_every_n_steps` optimizer steps the weights are
streamed bucket by bucket (`model/gather.py`, `export_bucket_mb`, in the engine's dtype): all ranks take part in
each bucket's gather, only rank 0 keeps it and hands it on (a file per bucket, or the in-process engine's reload),
so no rank holds more than its shard plus two buckets of full tensors; then the engine gets the next policy
version. The trainer pauses only for the export itself. A multi-process trainer needs
`engine: subprocess` (or `servers`): an in-process `vllm.LLM` adopts the trainer's initialised default process
group as its own world and creates sub-groups in it, collectives that only rank 0 would join (rank 0 hangs), so
`setup` refuses `inprocess` when the world size is above 1.

The initial weights are exported from the LightningModule once a checkpoint was restored (`on_fit_start`, or
`on_train_start` under strategies that restore after setup, e.g. FSDP2), so a resumed run samples from the
restored policy. Checkpoints hold the queue's ledger, the
dispatcher RNG and the policy version; groups not yet trained are re-dispatched on resume.

At start rank 0 removes sandbox containers whose owner process is dead (`envs.docker_host.sweep_orphans`), i.e.
what a SIGKILLed earlier run left; their names are in `orphans_removed` and the log.

Shutdown: `on_fit_end` and `on_exception` (errors, KeyboardInterrupt, Lightning's SIGTERM handling) stop the
workers (each episode's container is removed by its session) and close the engine, so nothing is orphaned.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import torch

from north_lightning.callbacks.sidecar_engine import check_engine_settings, engine_dtype, start_engine
from north_lightning.rl.spool import RolloutSpool
from north_lightning.modules.rl import log_sparse_metrics
from north_lightning.rl.env_specs import EnvSpec, load_env_tasks
from north_lightning.rl.sampler import RolloutService

log = logging.getLogger(__name__)
def _restores_after_setup(trainer: L.Trainer) -> bool:
    return bool(getattr(trainer.strategy, "restore_checkpoint_after_setup", False))


class _RolloutCallback(L.Callback):
    """Shared machinery; `mode` picks the schedule. See `VLLMSidecar` for the arguments."""

    mode = "async"
    default_export_every = 4

    def __init__(self, envs: list[dict[str, Any]], groups_per_step: int = 4, group_size: int = 8,
                 export_every_n_steps: int | None = None, engine: str = "subprocess", engine_kwargs: dict[str, Any] | None = None,
                 num_workers: int = 2, window: float = 0.1, max_staleness_steps: int = 16, on_stale: str = "drop",
                 prefetch_batches: int = 1, rollout: dict[str, Any] | None = None, seed: int = 0,
                 work_dir: str | None = None, shutdown_timeout_s: float = 120.0, max_engine_restarts: int = 3,
                 image_prefetch: int = 0, images: dict[str, Any] | None = None,
                 docker_hosts: list[Any] | None = None,
                 spool_retention: bool = True, placement: dict[str, Any] | None = None,
                 export_bucket_mb: int | None = None, export_dtype: str | None = None,
                 weight_update_mode: str = "keep") -> None:
        from north_lightning.rl.engines.stepped import check_update_mode

        self.weight_update_mode = check_update_mode(weight_update_mode)
        if export_every_n_steps is None:
            export_every_n_steps = self.default_export_every
        if export_every_n_steps < 1:
            raise ValueError(f"export_every_n_steps must be >= 1, got {export_every_n_steps}")
        check_engine_settings(engine, engine_kwargs or {})
        self.env_specs = [EnvSpec(**e) for e in envs]
        if not self.env_specs:
            raise ValueError("at least one environment is needed in `envs`")
        self.groups_per_step, self.group_size = groups_per_step, group_size
        self.export_every_n_steps = export_every_n_steps
        self.engine_kind, self.engine_kwargs = engine, dict(engine_kwargs or {})
        self.num_workers, self.window, self.on_stale = num_workers, window, on_stale
        self.max_staleness_steps = max_staleness_steps
        self.prefetch_batches, self.rollout_kwargs, self.seed = prefetch_batches, dict(rollout or {}), seed
        self.work_dir, self.shutdown_timeout_s = work_dir, shutdown_timeout_s
        self.max_engine_restarts = max_engine_restarts
        self.image_prefetch = image_prefetch
        from north_lightning.envs.registry import resolver_settings

        self.images = resolver_settings(images)
        from north_lightning.envs.fleet import parse_docker_hosts

        self.docker_hosts = list(docker_hosts or [])
        if self.docker_hosts:  # bad entries fail at construction, naming the entry
            parse_docker_hosts(self.docker_hosts)
        self.spool_retention = spool_retention
        from north_lightning.rl.placement import RLPlacement

        self.placement = RLPlacement.from_dict(placement)
        if self.placement is not None and not self.placement.colocated and engine != "servers":
            raise ValueError(f"placement.sampler_nodes={self.placement.sampler_nodes} puts the sampler on its own "
                             f"nodes: that needs engine: servers (got {engine!r})")
        self.export_bucket_mb = export_bucket_mb or (self.placement.export_bucket_mb if self.placement else 1024)
        if self.placement is not None and self.placement.sleep_wake:
            raise ValueError("placement.sleep_wake: the planner accounts for a colocated engine that sleeps while "
                             "the trainer steps, but this callback does not put the engine to sleep yet; use a "
                             "disaggregated placement (sampler_nodes > 0, engine: servers)")
        self.export_dtype = export_dtype
        self.spool_pruned = 0  # batches deleted by the retention rule (callbacks/spool_retention.py)
        self.service: RolloutService | None = None
        self.engine: Any = None
        self.policy_version = 0
        self.export_seconds: list[float] = []
        self._restored: dict[str, Any] | None = None
        self._last_step = 0
        self._batch_end_at: float | None = None
        self._idle = self._busy = 0.0
        self._work: Path | None = None
        self._started = False
        self.orphans_removed: list[str] = []

    # -- setup ------------------------------------------------------------------------------------------------
    def _work_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.work_dir or Path(trainer.default_root_dir) / "rl")

    def _spool(self, trainer: L.Trainer) -> RolloutSpool:
        dm = trainer.datamodule
        resolve = getattr(dm, "resolved_spool_dir", None)
        return RolloutSpool(resolve() if callable(resolve) else self._work_dir(trainer) / "rollouts")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse, on every rank alike, what cannot work before any rank starts waiting for another."""
        if self.engine_kind == "inprocess" and trainer.world_size > 1:
            raise ValueError(
                f"engine: inprocess cannot run beside a {trainer.world_size}-process trainer: vLLM would take the "
                "trainer's process group as its own world and hang rank 0 in a collective the other ranks never "
                "join; use engine: subprocess (the engine in a child of rank 0) or servers")
        dm = trainer.datamodule
        if _restores_after_setup(trainer) and not getattr(dm, "lazy", True) and not getattr(dm, "num_workers", 0):
            raise ValueError(
                f"{type(trainer.strategy).__name__} restores checkpoints after `on_fit_start`, so the sampler starts "
                "in `on_train_start`, after Lightning fetched the first batch: with data.lazy=false and "
                "data.num_workers=0 that fetch would wait for a batch nobody writes yet; use data.lazy=true")
        if self.engine_kind == "servers" and self.engine_kwargs.get("weight_transfer") == "nccl":
            from north_lightning.rl.engines.weight_transfer import require_cuda

            require_cuda()  # here, not when rank 0 starts the pool: the other ranks would wait for it forever

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start here where possible: the fit loop fetches the first batch before `on_train_start`. Module weights
        and this callback's state are restored from a checkpoint before this hook by most strategies, the
        trainer's step counter not yet, so the step comes from our own state."""
        self._started = False
        if not _restores_after_setup(trainer):
            self._start(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Strategies that shard the model (FSDP2: `NorthParallelStrategy`, Lightning's ModelParallel/FSDP)
        restore the checkpoint *after* `on_fit_start`: starting there would sample from the pre-resume weights
        and treat a resumed run as a fresh one (journal wiped, ids from 0, the trainer waiting for a batch
        index the sampler never writes: a hang). So under them the sampler starts here, after the restore; the
        first batch fetched before this hook is only a lazy descriptor (`setup` refuses eager reads there)."""
        if not self._started:
            self._start(trainer, pl_module)

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from north_lightning.rl.rollout import RolloutConfig

        self._started = True
        step = int(self._restored["global_step"]) if self._restored is not None else 0
        work = self._work = self._work_dir(trainer)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = work / "engine_init"
        self._gather_to_dir(pl_module, model_dir, tokenizer_dir=self._tokenizer_dir(pl_module))
        if trainer.is_global_zero:
            # Before the barrier: once past it another rank may read batch `step`, and a file of that name left
            # by a killed earlier run (or its failure note) must be gone by then, not when the sampler starts.
            self._spool(trainer).restart_at(step)
        trainer.strategy.barrier("vllm_sidecar_init")
        pl_module.policy_version, pl_module.last_export_step = self.policy_version, step
        self._last_step = step
        if not trainer.is_global_zero:
            return
        if self.docker_hosts:
            from north_lightning.envs.fleet import configure_docker_hosts

            configure_docker_hosts(self.docker_hosts)
        self._sweep_orphans()
        self.engine = self._start_engine(model_dir)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        from north_lightning.envs.session import configure_image_resolver

        configure_image_resolver(**self.images, record_path=work / "images.json")
        tasks = {spec.name: load_env_tasks(spec, work / "tasks") for spec in self.env_specs}
        journal = work / "dispatch_journal.jsonl"
        if self._restored is None:
            journal.unlink(missing_ok=True)  # a fresh run: ids start at 0 again
        known = {f.name for f in fields(RolloutConfig)}
        unknown = set(self.rollout_kwargs) - known
        if unknown:
            raise ValueError(f"rollout: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        self.service = RolloutService(
            engine=self.engine, tokenizer=tokenizer, envs=self.env_specs, tasks=tasks, spool=self._spool(trainer),
            groups_per_step=self.groups_per_step, group_size=self.group_size, mode=self.mode,
            num_workers=self.num_workers, window=self.window, max_staleness_steps=self.max_staleness_steps,
            on_stale=self.on_stale, prefetch_batches=self.prefetch_batches,
            rollout_config=RolloutConfig(**self.rollout_kwargs), seed=self.seed, restart_engine=self._restart_engine,
            max_engine_restarts=self.max_engine_restarts, journal=journal, image_prefetch=self.image_prefetch)
        if self._restored is not None:
            self.service.load_state_dict(self._restored["service"])
        self.service.start(step)
        atexit.register(self._shutdown)

    def _tokenizer_dir(self, pl_module: L.LightningModule) -> str:
        """The tokenizer copied next to the engine's start weights: the datamodule's, else the init checkpoint's,
        else the bundled tiny tokenizer."""
        datamodule_tok = getattr(pl_module.trainer.datamodule, "tokenizer_path", None)
        tokenizer_dir = datamodule_tok or pl_module.hparams.get("init_from")
        if tokenizer_dir is None:
            from north_lightning.assets import tiny_tokenizer_path

            tokenizer_dir = tiny_tokenizer_path()
        return str(tokenizer_dir)

    def _export_torch_dtype(self) -> torch.dtype:
        return engine_dtype(self.export_dtype, self.engine_kind, self.engine_kwargs)

    def _gather_to_dir(self, pl_module: L.LightningModule, out: Path, tokenizer_dir: str | None = None,
                       on_file: Any = None) -> Any:
        """Stream the module's weights bucket by bucket into an HF directory written by rank 0 (collective; see
        `model/gather.py`: no rank holds more than its shard plus two buckets; `on_file` gets each bucket's file on
        rank 0 once written). Returns the gather's statistics."""
        from north_lightning.model.gather import write_hf_streaming

        return write_hf_streaming(pl_module.model, pl_module.model.config, out,
                                  bucket_bytes=self.export_bucket_mb * 2**20, dtype=self._export_torch_dtype(),
                                  tokenizer_dir=tokenizer_dir, on_file=on_file)

    def _sweep_orphans(self) -> None:
        """Remove the sandbox containers an earlier SIGKILLed run on this host left behind (owner process gone),
        before ours start; live runs' containers, and other users' and hosts' on a shared engine, are kept."""
        from north_lightning.envs.docker_host import sweep_orphans
        from north_lightning.envs.fleet import current_fleet

        fleet = current_fleet()
        if fleet is not None:  # host by host; a host that does not answer is swept when it is back
            self.orphans_removed = fleet.sweep_orphans()
        else:
            self.orphans_removed = sweep_orphans()  # a container's disk bound goes with it (envs/disk.py)
        if self.orphans_removed:
            log.warning("removed %d orphaned sandbox containers of dead runs: %s", len(self.orphans_removed),
                        ", ".join(self.orphans_removed))
        else:
            log.info("no orphaned sandbox containers")

    def _start_engine(self, model_dir: Path) -> Any:
        assert self._work is not None
        return start_engine(self.engine_kind, self.engine_kwargs, model_dir, weights_dir=self._work / "sampler_weights",
                            policy_version=self.policy_version, weight_update_mode=self.weight_update_mode)

    def _restart_engine(self) -> None:
        restart = getattr(self.engine, "restart", None)
        if not callable(restart):
            raise RuntimeError(f"engine {self.engine_kind!r} cannot be restarted")
        restart()

    # -- training loop ---------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._check_service()
        now = time.perf_counter()
        if self._batch_end_at is not None:
            self._idle += now - self._batch_end_at
        self._batch_start_at = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        self._busy += now - self._batch_start_at
        step = trainer.global_step
        if step != self._last_step:  # an optimizer step happened (the end of an accumulation window)
            self._last_step = step
            if self._idle + self._busy > 0:
                log_sparse_metrics(trainer, {"rl/trainer_idle_frac": self._idle / (self._idle + self._busy)})
            self._idle = self._busy = 0.0
            if step % self.export_every_n_steps == 0:
                self.export(trainer, pl_module)
            if self.service is not None:
                self.service.on_optimizer_step(step)
            if self.spool_retention and trainer.is_global_zero:
                from north_lightning.callbacks.spool_retention import prune_spool

                self.spool_pruned += len(prune_spool(trainer, self._spool(trainer)))
        self._batch_end_at = time.perf_counter()

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stream the weights bucket by bucket (every rank takes part in each bucket's gather, rank 0 keeps it) into
        the engine, bump the policy version everywhere. In-process engine (one rank): the buckets go into its
        in-place reload; other engines: one safetensors file per bucket under `<work_dir>/sampler_weights/v<N>`,
        which the engine (or every server: shared storage, or NCCL from rank 0) reloads; sampler servers with
        `bucketed_reload` (files, the default) load each bucket's file while the next one is gathered."""
        from north_lightning.model.gather import GatherStats, iter_full_buckets
        from north_lightning.model.hf import hf_tensors

        start = time.perf_counter()
        self.policy_version += 1
        stats = GatherStats(self.export_bucket_mb * 2**20)
        if self.engine_kind == "inprocess":  # world size 1 (setup refuses more)
            weights: dict[str, torch.Tensor] = {}
            for bucket in iter_full_buckets(pl_module.model, bucket_bytes=stats.bucket_bytes,
                                            dtype=self._export_torch_dtype(), stats=stats):
                for name, tensor in bucket.items():
                    weights.update(hf_tensors(name, tensor))
                del bucket
            if self.engine is not None:
                if self.service is not None:
                    self.service.on_export(self.policy_version, trainer.global_step)
                self.engine.load_weights(weights, self.policy_version)
            del weights
        else:
            assert self._work is not None
            out = self._work / "sampler_weights" / f"v{self.policy_version}"
            # sampler servers load each bucket's file while the next is gathered (ServerPool.bucketed_reload)
            streamed = trainer.is_global_zero and getattr(self.engine, "bucketed_reload", False)
            if streamed and self.service is not None:
                self.service.on_export(self.policy_version, trainer.global_step)
            with self.engine.streamed_update(self.policy_version, out) if streamed else nullcontext() as on_file:
                self._gather_to_dir(pl_module, out, on_file=on_file)
            if trainer.is_global_zero and self.engine is not None:
                if not streamed:
                    if self.service is not None:
                        self.service.on_export(self.policy_version, trainer.global_step)
                    self.engine.load_weights(str(out), self.policy_version)
                for old in (self._work / "sampler_weights").glob("v*"):  # only the loaded version is kept
                    if old != out:
                        shutil.rmtree(old, ignore_errors=True)
        trainer.strategy.barrier("vllm_sidecar_export")
        seconds = time.perf_counter() - start
        self.export_seconds.append(seconds)
        if trainer.is_global_zero and self._work is not None:
            with (self._work / "exports.jsonl").open("a") as f:
                f.write(json.dumps({"step": trainer.global_step, "version": self.policy_version,
                                    "seconds": round(seconds, 4), "buckets": stats.buckets,
                                    "peak_extra_mb": round(stats.peak_bytes / 2**20, 3)}) + "\n")
        pl_module.policy_version, pl_module.last_export_step = self.policy_version, trainer.global_step
        metrics = {"rl/export_seconds": seconds, "rl/export_peak_extra_mb": stats.peak_bytes / 2**20}
        engine_metrics = getattr(self.engine, "metrics", None)  # stale-KV figures of the last export window
        if trainer.is_global_zero and callable(engine_metrics):
            try:
                metrics.update(engine_metrics())
            except RuntimeError as err:  # a dead engine (EngineDied) is the rollout service's to handle, not ours
                log.warning("engine metrics unavailable at export: %s", err)
        log_sparse_metrics(trainer, metrics)

    def _check_service(self) -> None:
        if self.service is not None and self.service.errors:
            raise RuntimeError(f"rollout service failed: {self.service.errors[0]}")

    # -- shutdown -------------------------------------------------------------------------------------------------
    def _shutdown(self, reason: str = "run_end") -> None:
        """Stop workers, close the engine, write the ledger. Idempotent (several hooks may call it)."""
        service, self.service = self.service, None
        if service is not None:
            service.stop(self.shutdown_timeout_s)
            service.queue.cancel_open(reason)
            self._write_ledger(service)
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def _write_ledger(self, service: RolloutService) -> None:
        """`<work_dir>/ledger.json`: the end state of every dispatched prompt of this run (one entry each)."""
        if self._work is None:
            return
        ledger = {str(gid): {"prompt": e.prompt, "state": e.state, "reason": e.reason, "attempts": e.attempts}
                  for gid, e in service.queue.ledger().items()}
        out = {"summary": dict(service.queue.ledger_summary()), "counters": dict(service.queue.counters),
               "entries": ledger}
        (self._work / "ledger.json").write_text(json.dumps(out, indent=1, default=str))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shutdown()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._shutdown(f"run_error:{type(exception).__name__}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._shutdown()

    # -- checkpoint -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"policy_version": self.policy_version, "global_step": self._last_step}
        if self.service is not None:
            state["service"] = self.service.state_dict()
            state["ledger_summary"] = dict(self.service.queue.ledger_summary())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict if "service" in state_dict else None
        self.policy_version = int(state_dict.get("policy_version", 0))


class VLLMSidecar(_RolloutCallback):
    """Asynchronous RL: rollout workers sample continuously from a vLLM engine; weights are exported every
    `export_every_n_steps` optimizer steps; a windowed FIFO with bounded staleness feeds the trainer.

    Args:
        envs: list of `EnvSpec` fields (name, tasks, harness, weight, max_steps).
        groups_per_step: prompts per optimizer step (each with `group_size` rollouts).
        export_every_n_steps: K, optimizer steps between weight exports (policy version +1 each); default 4.
        engine: `subprocess` (default: the engine in a child process, off the trainer's GIL and restartable),
            `inprocess` (vllm.LLM in this process: tests and the tiny CPU demo) or `servers` (`vllm serve`
            sampler nodes through `rl.engines.server.ServerPool`: `engine_kwargs.urls`, else `NORTH_SAMPLER_URLS`;
            with `weight_transfer: files` (default) weights travel through `<work_dir>/sampler_weights`, which the
            sampler nodes must see at the same path; with `weight_transfer: nccl` (+ `nccl: {master_address,
            master_port, packed, timeout_s}`, GPU only) rank 0 streams them over NCCL, see
            `rl/engines/weight_transfer.py`). `engine_kwargs` go to the engine (for `servers`: urls, timeout, model,
            weight_transfer, nccl, bucketed_reload; see `rl/engines/server.py`).
        num_workers: rollout worker threads, i.e. groups sampled at once; a group's G rollouts run side by side
            and their turns share engine batches. window / max_staleness_steps / on_stale: the queue's rules
            (staleness in optimizer steps, enforced at dispatch and at consumption; `rl/queue.py`).
        max_engine_restarts: an engine that dies (process killed, or an exception inside an engine step, after
            which vLLM keeps the failed requests and never answers again) is replaced and its groups re-queued;
            after this many restarts the next death ends the run with its reason.
        prefetch_batches: how many batches the batcher may write ahead of the trainer.
        images: how instance images are pulled: `pull_policy` (missing / always / never), `attempts`,
            `base_delay_sec`, `factor`, `max_delay_sec` (exponential backoff); every resolution (source, digest,
            attempts) is recorded in `<work_dir>/images.json`.
        image_prefetch: look-ahead window of the image prefetcher: the images of the next N tasks in the dispatch
            order are pulled or built in the background (`envs/registry.py`); 0 = each episode resolves its own.
        docker_hosts: a fleet of Docker engines for the sandboxes (`envs/fleet.py`): URLs (`unix://`, `tcp://`,
            `ssh://`) or `{url, max_sandboxes}`; least-loaded placement under the caps, a host that stops
            answering is drained and its episodes retried elsewhere (`infra_error:host_down`). Empty: the local
            engine (or `NORTH_DOCKER_HOSTS`).
        placement: where the sampler runs (`rl/placement.py`: sampler_nodes, tensor_parallel_size, expert_parallel,
            max_model_len, kv_cache_gib, export_bucket_mb, sleep_wake, gpu_gib); `plan` sizes both sides from it and
            refuses what cannot fit, `slurm` starts the sampler nodes' servers with it.
        export_bucket_mb: size of one export bucket (default: placement.export_bucket_mb, else 1024); must hold the
            largest tensor. export_dtype: the dtype the weights are gathered and sent in (default: the engine's).
        spool_retention: delete spool batches once trained and older than the oldest checkpoint on disk (disk
            stays bounded; every kept checkpoint keeps the batches it would train next), see
            `callbacks/spool_retention.py`; false keeps every batch (to inspect a short run's data).
        rollout: `RolloutConfig` fields (max_context, max_tokens_per_turn, temperature, ...).
        weight_update_mode: what an export does to the turns being generated (`rl/engines/stepped.py`):
            `keep` (default, PipelineRL's choice: running requests pause between two engine steps with their KV
            cache kept, the weights change, they resume; tokens after the swap carry the new version; the KV kept
            was computed by the old weights, and the logprob difference this makes is measured on a sample of
            such completions and logged as `rl/stale_kv_logprob_diff_{mean,max}`), `recompute` (running requests
            are resubmitted as prompt + tokens so far, so their KV is recomputed under the new weights; each
            token keeps its own version and logprob) or `drain` (the export waits for running turns and holds new
            ones back: the old behaviour, for comparison). Every token records the policy version that produced
            it; the RL module logs the version lag (`rl/version_lag_{mean,max}`, `rl/tokens_across_update`).
            With `engine: servers` the same three modes act on the `vllm serve` sampler nodes through their
            `/pause?mode=keep` / `/update_weight_version` / `/resume` routes (`rl/engines/server.py`).
    """

    mode = "async"


class SyncRollouts(_RolloutCallback):
    """On-policy baseline: sample one batch with the current weights, train on it, export, repeat.
    Same arguments as `VLLMSidecar`; `export_every_n_steps` defaults to 1 (every step) and the queue takes
    the whole batch in input order."""

    mode = "sync"
    default_export_every = 1
