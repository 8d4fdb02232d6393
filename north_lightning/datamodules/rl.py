"""Streaming RL datamodule: global batches of rollout groups → packed, sharded micro-batches.

Why a spool directory between the sampler and the data loader: the rollout queue lives in rank 0's process
(next to the engine), but every rank and every dataloader worker must read the batches. The sampler side
(`VLLMSidecar` / `SyncRollouts`) writes global batch `i` (all groups of optimizer step `i`, plain Python data)
atomically to `spool_dir/batch_{i:08d}.pt`; readers poll for it. So the Lightning loop is an ordinary `fit`
over an endless IterableDataset, and `max_steps` ends the run.

Sharding, so that no group is trained twice or skipped:
- ranks split each global batch by **group** (group j goes to rank j % world): a group's rollouts stay together;
- dataloader workers split by **micro-batch**: item k = i * M + m (global batch i, micro-batch m of M =
  `accumulate_grad_batches`) is produced by worker k % W; the DataLoader's round-robin over workers then yields
  items in exactly the order k = 0, 1, 2, ... .

Each micro-batch follows the packed-batch contract (input_ids, position_ids, document_ids, targets) plus
`sampler_logprobs` and `advantages` (aligned with targets), `versions` (oldest policy version of the
document, -1 on padding), and `num_tokens`: the trainable tokens of the whole **global** batch (all ranks, all
micro-batches), which the CISPO loss divides by. `meta` carries the step's statistics for logging.

Lazy reads (the default in `RLDataModule`): Lightning's fetcher asks for batch k+1 before it trains batch k,
but a synchronous schedule cannot have produced batch k+1 yet. So the stream yields small descriptors and
the datamodule resolves each one in `on_before_batch_transfer`, i.e. right before its training step. (With
`lazy=False` the stream reads eagerly, which lets dataloader workers pack ahead when the sampler runs ahead.)

Resume: item positions are a pure function of the optimizer step, so a resumed run reads from
`start_step = trainer.global_step` (set by the module's checkpoint hook through `load_state_dict`).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from north_lightning.rl.losses import rloo_advantages

IGNORE_INDEX = -100


class RolloutSpool:
    """Global batches on disk, written once by the sampler side, read by every rank/worker. A sampler that
    cannot go on leaves `sampler_failed.txt` with its reason, so every reader stops waiting at once (all ranks
    and workers see the directory; the sampler's own exception lives only in rank 0's threads)."""

    FAILED = "sampler_failed.txt"

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def fail(self, reason: str) -> None:
        tmp = self.dir / f".{self.FAILED}.{os.getpid()}.tmp"
        tmp.write_text(reason + "\n")
        os.replace(tmp, self.dir / self.FAILED)

    def failure(self) -> str | None:
        path = self.dir / self.FAILED
        return path.read_text().strip() if path.exists() else None

    def clear_failure(self) -> None:
        (self.dir / self.FAILED).unlink(missing_ok=True)

    def path(self, index: int) -> Path:
        return self.dir / f"batch_{index:08d}.pt"

    def put(self, index: int, batch: dict[str, Any]) -> None:
        tmp = self.dir / f".batch_{index:08d}.{os.getpid()}.tmp"
        torch.save(batch, tmp)
        os.replace(tmp, self.path(index))  # atomic: a reader never sees a half-written batch

    def get(self, index: int, timeout: float, poll: float = 0.05,
            stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Wait for batch `index`. `stop()` true while waiting raises Lightning's `SIGTERMException`: Lightning only
        acts on SIGTERM between batches, so a trainer waiting for a stalled sampler would otherwise ignore it
        until `timeout` (and be SIGKILLed by SLURM meanwhile, leaving containers behind)."""
        deadline = time.monotonic() + timeout
        path = self.path(index)
        while not path.exists():
            failure = self.failure()
            if failure is not None:
                raise RuntimeError(f"no rollout batch {index}: the sampler failed: {failure}")
            if stop is not None and stop():
                from lightning.pytorch.utilities.exceptions import SIGTERMException

                raise SIGTERMException(f"SIGTERM received while waiting for rollout batch {index}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rollout batch {index} in {self.dir} after {timeout:.0f} s: is the sampler "
                                   "callback (VLLMSidecar / SyncRollouts) configured and alive?")
            time.sleep(poll)
        return torch.load(path, weights_only=False)

    def restart_at(self, index: int) -> int:
        """Ready the spool for a sampler that starts at batch `index`: batches >= index and the failure note of
        an earlier (killed or failed) sampler are removed. Returns the number of batches removed."""
        self.clear_failure()
        return self.discard_from(index)

    def discard_from(self, index: int) -> int:
        """Delete batches >= index (written before a crash, their groups are re-dispatched on resume)."""
        removed = 0
        for p in self.dir.glob("batch_*.pt"):
            if int(p.stem.split("_")[1]) >= index:
                p.unlink()
                removed += 1
        return removed


def rollout_document(rollout: dict[str, Any]) -> tuple[list[int], list[bool], list[float]]:
    """Concatenate a rollout's segments: token ids, whether each token was generated by the policy, and the
    sampler logprob of each generated token (0 elsewhere)."""
    ids: list[int] = []
    gen: list[bool] = []
    lps: list[float] = []
    for seg in rollout["segments"]:
        tokens, logprobs, trainable = seg["token_ids"], seg["logprobs"], seg["trainable"]
        if trainable and (logprobs is None or len(logprobs) != len(tokens)):
            raise ValueError(f"rollout of task {rollout.get('task_id')!r}: a trainable segment needs one sampler "
                             f"logprob per token ({len(tokens)} tokens, "
                             f"{'no' if logprobs is None else len(logprobs)} logprobs)")
        ids += tokens
        gen += [bool(trainable)] * len(tokens)
        lps += list(logprobs) if trainable else [0.0] * len(tokens)
    return ids, gen, lps


def trainable_targets(rollout: dict[str, Any]) -> int:
    """Number of positions whose target is a generated token (the first token is never predicted)."""
    _, gen, _ = rollout_document(rollout)
    return sum(gen[1:])


def pack_rollouts(docs: list[tuple[dict[str, Any], float]], row_tokens: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pack (rollout, advantage) documents greedily, in order, into rows of `row_tokens`."""
    rows: list[list[tuple[dict[str, Any], float]]] = [[]]
    used = 0
    for rollout, adv in docs:
        n = len(rollout_document(rollout)[0])
        if n > row_tokens:
            raise ValueError(f"rollout of task {rollout.get('task_id')!r} has {n} tokens > row_tokens={row_tokens}: "
                             "raise data.row_tokens to at least the engine's context limit")
        if used + n > row_tokens and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append((rollout, adv))
        used += n
    B, S = len(rows), row_tokens
    out = {
        "input_ids": torch.full((B, S), pad_id, dtype=torch.long),
        "position_ids": torch.zeros((B, S), dtype=torch.long),
        "document_ids": torch.zeros((B, S), dtype=torch.long),
        "targets": torch.full((B, S), IGNORE_INDEX, dtype=torch.long),
        "sampler_logprobs": torch.zeros((B, S), dtype=torch.float32),
        "advantages": torch.zeros((B, S), dtype=torch.float32),
        "versions": torch.full((B, S), -1, dtype=torch.long),
    }
    for b, row in enumerate(rows):
        pos = 0
        for d, (rollout, adv) in enumerate(row):
            ids, gen, lps = rollout_document(rollout)
            n = len(ids)
            sl = slice(pos, pos + n)
            out["input_ids"][b, sl] = torch.tensor(ids)
            out["position_ids"][b, sl] = torch.arange(n)
            out["document_ids"][b, sl] = d
            tgt = torch.tensor(ids[1:] + [IGNORE_INDEX])
            learn = torch.tensor(gen[1:] + [False])
            out["targets"][b, sl] = torch.where(learn, tgt, torch.full_like(tgt, IGNORE_INDEX))
            out["sampler_logprobs"][b, sl] = torch.where(learn, torch.tensor(lps[1:] + [0.0]), 0.0)
            out["advantages"][b, sl] = torch.where(learn, torch.tensor(adv), torch.tensor(0.0))
            out["versions"][b, sl] = min(rollout.get("versions") or [-1])
            pos += n
        if pos < S:
            out["document_ids"][b, pos:] = len(row)  # padding is its own document
            out["position_ids"][b, pos:] = torch.arange(S - pos)
    return out


def global_batch_stats(batch: dict[str, Any], invalid_reasons: tuple[str, ...]) -> dict[str, float]:
    """Step statistics of a whole global batch (identical on every rank)."""
    rollouts = [r for g in batch["groups"] for r in g["rollouts"]]
    stats: dict[str, float] = {}
    if rollouts:
        stats["rl/reward_mean"] = sum(r["reward"] for r in rollouts) / len(rollouts)
        stats["rl/traj_tokens_mean"] = sum(len(rollout_document(r)[0]) for r in rollouts) / len(rollouts)
        stats["rl/traj_steps_mean"] = sum(r.get("steps", 0) for r in rollouts) / len(rollouts)
        invalid = sum(str(r.get("end_reason", "")).startswith(invalid_reasons) for r in rollouts)
        stats["rl/invalid_tool_call_rate"] = invalid / len(rollouts)
        by_env: dict[str, list[float]] = {}
        for r in rollouts:
            by_env.setdefault(r.get("env", "default"), []).append(float(r["reward"] >= 1.0))
        for env, passed in by_env.items():
            stats[f"rl/pass@1/{env}"] = sum(passed) / len(passed)
        for reason, n in Counter(r.get("end_reason", "unknown") for r in rollouts).items():
            stats[f"rl/end_reason/{reason}"] = n / len(rollouts)
    stale = Counter(int(g.get("staleness", 0)) for g in batch["groups"])
    for s, n in stale.items():
        stats[f"rl/staleness/{s}"] = float(n)
    if batch["groups"]:
        stats["rl/staleness_mean"] = sum(s * n for s, n in stale.items()) / len(batch["groups"])
    for key, value in (batch.get("sampler_stats") or {}).items():
        stats[key] = float(value)
    return stats


class RolloutBatchStream(IterableDataset):
    """Endless stream of packed micro-batches read from a `RolloutSpool` (see the module docstring)."""

    def __init__(self, spool_dir: str | Path, *, micro_batches: int, row_tokens: int, pad_id: int,
                 rloo_std: bool = False, start_step: int = 0, timeout_s: float = 3600.0,
                 invalid_reasons: tuple[str, ...] = (), rank: int | None = None, world_size: int | None = None,
                 lazy: bool = False, stop: Callable[[], bool] | None = None) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.spool = RolloutSpool(spool_dir)
        self.micro_batches, self.row_tokens, self.pad_id = micro_batches, row_tokens, pad_id
        self.rloo_std, self.start_step, self.timeout_s = rloo_std, start_step, timeout_s
        self.invalid_reasons = tuple(invalid_reasons)
        self._rank, self._world = rank, world_size
        self.lazy, self.stop = lazy, stop
        self._cached: tuple[int, dict[str, Any]] | None = None

    def _rank_world(self) -> tuple[int, int]:
        if self._rank is not None and self._world is not None:
            return self._rank, self._world
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def micro_batch(self, batch: dict[str, Any], micro: int, rank: int, world: int) -> dict[str, Any]:
        """Micro-batch `micro` of this rank's share of a global batch."""
        docs_by_group: list[list[tuple[dict[str, Any], float]]] = []
        num_tokens = 0
        for group in batch["groups"]:
            rewards = torch.tensor([[float(r["reward"]) for r in group["rollouts"]]])
            adv = rloo_advantages(rewards, normalize_std=self.rloo_std)[0].tolist()
            docs_by_group.append(list(zip(group["rollouts"], adv)))
            num_tokens += sum(trainable_targets(r) for r in group["rollouts"])
        mine = [doc for j, docs in enumerate(docs_by_group) if j % world == rank for doc in docs]
        # Balance this rank's documents over the M micro-batches by length (longest first, deterministic).
        order = sorted(range(len(mine)), key=lambda k: (-len(rollout_document(mine[k][0])[0]), k))
        loads = [0] * self.micro_batches
        bins: list[list[int]] = [[] for _ in range(self.micro_batches)]
        for k in order:
            m = min(range(self.micro_batches), key=lambda j: (loads[j], j))
            bins[m].append(k)
            loads[m] += len(rollout_document(mine[k][0])[0])
        packed = pack_rollouts([mine[k] for k in sorted(bins[micro])], self.row_tokens, self.pad_id)
        packed["num_tokens"] = torch.tensor(float(max(num_tokens, 1)))
        packed["meta"] = {
            "step": int(batch["index"]), "micro": micro, "rank": rank, "sampler_run": batch.get("sampler_run"),
            "group_ids": [g["group_id"] for j, g in enumerate(batch["groups"]) if j % world == rank],
            "stats": global_batch_stats(batch, self.invalid_reasons) if micro == 0 else {},
        }
        return packed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self._rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        M = self.micro_batches
        k = self.start_step * M
        k += (worker - k) % workers  # first item of this worker
        while True:
            index, micro = divmod(k, M)
            yield {"rl_batch": (index, micro)} if self.lazy else self.resolve(index, micro)
            k += workers

    def resolve(self, index: int, micro: int) -> dict[str, Any]:
        """Read (waiting for it) global batch `index` and build this rank's micro-batch `micro`."""
        rank, world = self._rank_world()
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self.spool.get(index, self.timeout_s, stop=self.stop))
        return self.micro_batch(self._cached[1], micro, rank, world)


class RLDataModule(L.LightningDataModule):
    """Datamodule of the RL stage: a `RolloutBatchStream` over the sampler callback's spool.

    Args:
        spool_dir: where the sampler callback writes global batches (default: `<trainer.default_root_dir>/rollouts`).
        row_tokens: tokens per packed row (>= the engine's context limit).
        micro_batches: micro-batches per optimizer step; must equal the trainer's `accumulate_grad_batches`.
        num_workers: dataloader workers for eager reads (`lazy=False`; each builds its own micro-batches).
        lazy: resolve batches right before their training step (required by `SyncRollouts`; see above).
        rloo_std: divide RLOO advantages by the group's reward std.
        invalid_reasons: prefixes of episode end reasons counted in `rl/invalid_tool_call_rate`.
        pad_id: padding token id.
        tokenizer_path: the policy's tokenizer directory (usually the init checkpoint), copied into exports.
    """

    def __init__(self, spool_dir: str | None = None, row_tokens: int = 4096, micro_batches: int = 1,
                 num_workers: int = 0, lazy: bool = True, rloo_std: bool = False, timeout_s: float = 3600.0,
                 invalid_reasons: tuple[str, ...] = ("format_error",),
                 pad_id: int = 0, tokenizer_path: str | None = None) -> None:
        super().__init__()
        self.tokenizer_path = tokenizer_path  # copied next to HF exports (HFExport, the engine's start dir)
        self.spool_dir = spool_dir
        self.row_tokens, self.micro_batches, self.num_workers = row_tokens, micro_batches, num_workers
        self.rloo_std, self.timeout_s, self.invalid_reasons, self.pad_id = rloo_std, timeout_s, tuple(invalid_reasons), pad_id
        if lazy and num_workers:
            raise ValueError("data.num_workers > 0 needs data.lazy=false (lazy batches are resolved in the main "
                             "process, right before their training step)")
        self.lazy = lazy
        self.start_step = 0
        self._stream: RolloutBatchStream | None = None

    def resolved_spool_dir(self) -> Path:
        if self.spool_dir is not None:
            return Path(self.spool_dir)
        root = self.trainer.default_root_dir if self.trainer is not None else "."
        return Path(root) / "rollouts"

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None and self.trainer.accumulate_grad_batches != self.micro_batches:
            raise ValueError(f"data.micro_batches={self.micro_batches} must equal trainer.accumulate_grad_batches="
                             f"{self.trainer.accumulate_grad_batches} (the loss divides by the global token count)")
        start = self.trainer.global_step if self.trainer is not None else self.start_step
        stream = RolloutBatchStream(self.resolved_spool_dir(), micro_batches=self.micro_batches,
                                    row_tokens=self.row_tokens, pad_id=self.pad_id, rloo_std=self.rloo_std,
                                    start_step=start, timeout_s=self.timeout_s, invalid_reasons=self.invalid_reasons,
                                    lazy=self.lazy, stop=self._sigterm_received if self.num_workers == 0 else None)
        self._stream = stream
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, persistent_workers=False)

    def _sigterm_received(self) -> bool:
        return bool(getattr(self.trainer, "received_sigterm", False))

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "rl_batch" in batch:
            index, micro = (int(x) for x in batch["rl_batch"])
            return self._stream.resolve(index, micro)
        return batch
