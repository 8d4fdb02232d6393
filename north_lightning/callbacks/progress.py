"""One live progress line per stage: `ProgressLine` (plain, for any loop) and `ProgressLineCallback` (Lightning).

Why our own rather than Lightning's bars: the demo runs in terminals and in CI logs alike. TQDM and Rich redraw with
carriage returns and cursor codes, which a non-TTY log keeps as one ever-growing line (or as hundreds of lines), so
the tiny configs switch them off and a user saw nothing for long stretches. This line is redrawn in place (`\\r`) on
a terminal and printed as a new line at most every `every_s` seconds (and at the end) when the output is not one,
so a CI log shows a few readable lines per stage:

    [sft stage 1] step 20/40 loss 5.132 | 1.9 s/step | elapsed 38 s | ETA 38 s

At the end it prints the stage's wall time (from `start()`: the loop itself, without process start-up).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

import lightning as L


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


class ProgressLine:
    """Prints `[name] <unit> done/total <metrics> | rate | elapsed | ETA`; thread-safe (`update` may be called from
    worker threads). ETA is the mean time per unit so far times the units left."""

    def __init__(self, name: str, total: int, unit: str = "step", every_s: float = 10.0,
                 stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.name, self.total, self.unit, self.every_s = name, max(0, int(total)), unit, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._last_print: float | None = None  # the first update always prints
        self._printed_done: int | None = None  # a log line for this count exists: a forced repeat adds nothing
        self._done0 = 0  # units already done at start (a resumed run): excluded from the rate
        self._width = 0
        self.done = 0

    def start(self, done: int = 0) -> None:
        self._t0 = time.monotonic()
        self._done0 = self.done = done

    def line(self, metrics: dict[str, float] | None = None) -> str:
        elapsed = time.monotonic() - (self._t0 if self._t0 is not None else time.monotonic())
        parts = [f"[{self.name}] {self.unit} {self.done}/{self.total}"]
        for key, value in (metrics or {}).items():
            parts[0] += f" {key} {value:.3f}" if isinstance(value, float) else f" {key} {value}"
        progressed = self.done - self._done0
        if progressed > 0:
            per_unit = elapsed / progressed
            rate = f"{per_unit:.1f} s/{self.unit}" if per_unit >= 1 else f"{1 / per_unit:.1f} {self.unit}s/s"
            parts += [rate, f"elapsed {format_seconds(elapsed)}",
                      f"ETA {format_seconds(per_unit * max(0, self.total - self.done))}"]
        else:
            parts += [f"elapsed {format_seconds(elapsed)}", "ETA ?"]
        return " | ".join(parts)

    def update(self, done: int, metrics: dict[str, float] | None = None, force: bool = False) -> None:
        if self._t0 is None:
            self.start()
        with self._lock:
            self.done = done
            now = time.monotonic()
            due = self._last_print is None or now - self._last_print >= self.every_s
            if not (force or due or done >= self.total or self.tty):
                return
            if not self.tty and done == self._printed_done and (force or done >= self.total):
                return
            self._printed_done = done
            self._last_print = now
            text = self.line(metrics)
            if self.tty:
                self.stream.write("\r" + text.ljust(self._width))
                self._width = len(text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self, note: str = "") -> float:
        """End the line and print the wall time since `start()`; returns it in seconds."""
        wall = time.monotonic() - (self._t0 if self._t0 is not None else time.monotonic())
        with self._lock:
            if self.tty and self._width:
                self.stream.write("\n")
            self.stream.write(f"[{self.name}] {self.done}/{self.total} {self.unit}s in {format_seconds(wall)}"
                              + (f" ({note})" if note else "") + "\n")
            self.stream.flush()
        return wall


class ProgressLineCallback(L.Callback):
    """`ProgressLine` over `trainer.global_step` / `max_steps` (optimizer steps, so gradient accumulation counts
    once). Shows the logged `train/loss` and, for RL, the global batch's mean reward (`rl/reward_mean` of the
    batch's statistics, only present on the first micro-batch of a step). Add it with the bar switched off:

        --trainer.enable_progress_bar false --trainer.callbacks+=north_lightning.callbacks.ProgressLineCallback \\
        --trainer.callbacks.name "sft stage 1"
    """

    def __init__(self, name: str = "train", every_s: float = 10.0) -> None:
        super().__init__()
        self.name, self.every_s = name, every_s
        self.progress: ProgressLine | None = None
        self._metrics: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self.progress = ProgressLine(self.name, int(total), every_s=self.every_s)
        self.progress.start(done=trainer.global_step)
        self.progress.update(trainer.global_step, force=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.progress is None:
            return
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self._metrics["loss"] = float(loss)
        stats = (batch.get("meta") or {}).get("stats") if isinstance(batch, dict) else None
        if stats and "rl/reward_mean" in stats:
            self._metrics["reward"] = float(stats["rl/reward_mean"])
        self.progress.update(trainer.global_step, dict(self._metrics))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None:
            self.progress.update(trainer.global_step, dict(self._metrics), force=True)
            self.progress.finish()
            self.progress = None
