"""`ProgressLine` / `ProgressLineCallback`: one readable line per stage in a CI log (no carriage returns), one
redrawn line on a terminal, with step/total, loss and ETA, and the stage's wall time at the end."""

from __future__ import annotations

import io
import re

import lightning as L
import torch

from north_lightning.assets import ASSETS_DIR
from north_lightning.callbacks.progress import ProgressLine, ProgressLineCallback
from north_lightning.datamodules.jsonl import JsonlChatDataModule
from north_lightning.modules import SFTModule
from tests.modules.test_hf_export import SMALL


def test_non_tty_prints_throttled_lines_then_the_last_and_the_wall_time() -> None:
    out = io.StringIO()
    line = ProgressLine("stage", total=50, every_s=3600, stream=out, tty=False)
    line.start()
    for step in range(1, 51):
        line.update(step, {"loss": 2.0 / step})
    line.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # the first update prints (nothing printed yet), the throttle holds the rest until the total is reached
    assert len(lines) == 3, lines
    assert lines[0].startswith("[stage] step 1/50 loss 2.000 | ") and "ETA" in lines[0]
    assert lines[1].startswith("[stage] step 50/50 loss 0.040 | ") and lines[1].endswith("ETA 0 s")
    assert re.fullmatch(r"\[stage\] 50/50 steps in \d+ s", lines[2])


def test_tty_redraws_one_line_in_place() -> None:
    out = io.StringIO()
    line = ProgressLine("eval", total=3, unit="episode", stream=out, tty=True)
    line.start()
    for done in (1, 2, 3):
        line.update(done, {"pass": f"{done - 1}/{done}"})
    line.finish()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 2  # redrawn in place, ended once, wall time line
    assert "[eval] episode 3/3 pass 2/3 | " in text and "episodes/s" in text or "s/episode" in text


def test_callback_prints_steps_of_a_real_fit(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    dm = JsonlChatDataModule(str(ASSETS_DIR / "demo_chat.jsonl"), seq_len=320, batch_size=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ProgressLineCallback(name="sft test", every_s=0.0)])
    trainer.fit(SFTModule(SMALL), dm)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[sft test]")]
    # optimizer steps, not micro-batches: 0/4 at start, then 1..4 (twice each: two micro-batches per step), wall time
    steps = [int(m.group(1)) for ln in lines if (m := re.match(r"\[sft test\] step (\d+)/4", ln))]
    assert steps[0] == 0 and steps[-1] == 4 and set(steps) == {0, 1, 2, 3, 4} and len(steps) >= 5
    assert all(" loss " in ln for ln in lines[1:-1])
    assert re.fullmatch(r"\[sft test\] 4/4 steps in \d+ s", lines[-1])
