"""One RL optimizer step on 1 rank vs the same global rollout batch split over 2 gloo ranks (real Lightning,
RLDataModule, RLModule, NorthParallelStrategy; see rl_equality_worker.py): same global loss, same gradients
(max |difference| <= 1e-6 x the gradient norm, fp32). This pins the loss's global normaliser (`num_tokens` counts
every rank's trainable tokens), the module's x(accumulate x world) scaling against Lightning's division by the
accumulation count and FSDP2's gradient averaging, and the rank split by group.

The MoE load-balancing loss is off in this test (router_aux_loss_coef=0): it is computed from each forward's own
routing statistics (per micro-batch, per rank), which do not reduce over ranks.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.rl.spool import RolloutSpool

WORKER = Path(__file__).with_name("rl_equality_worker.py")
_spec = importlib.util.spec_from_file_location("rl_equality_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _step(run_dir: Path, devices: int, ep: int, init_hf: Path) -> dict:
    RolloutSpool(run_dir / "rollouts").put(0, worker.global_rollout_batch())
    proc = subprocess.run([sys.executable, str(WORKER), str(run_dir), str(devices), str(ep), str(init_hf)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((run_dir / f"result_{devices}.json").read_text())


@pytest.mark.slow
def test_one_rank_and_two_ranks_give_the_same_loss_and_gradients(tmp_path: Path) -> None:
    """The 2-rank run uses expert parallelism (EP=2: each rank holds half the experts; the dense weights are FSDP2
    shards), so both gradient paths (FSDP2 reduce-scatter, EP's own averaging) are checked."""
    torch.manual_seed(7)
    NorthForCausalLM(NorthConfig.preset("tiny", **worker.OVERRIDES)).save_pretrained(tmp_path / "init")
    one = _step(tmp_path / "one", 1, 1, tmp_path / "init")
    two = _step(tmp_path / "two", 2, 2, tmp_path / "init")
    assert one["loss"] != 0.0
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6, abs=0)
    assert one["grads"].keys() == two["grads"].keys()
    flat_one = torch.cat([torch.tensor(g) for g in one["grads"].values()])
    flat_two = torch.cat([torch.tensor(g) for g in two["grads"].values()])
    norm = float(flat_one.norm())
    assert norm > 0 and math.isfinite(norm)
    worst = max(float((torch.tensor(one["grads"][k]) - torch.tensor(two["grads"][k])).abs().max())
                for k in one["grads"])
    print(f"loss 1 rank {one['loss']!r} 2 ranks {two['loss']!r}; max grad diff {worst:.3e}, grad norm {norm:.3e}")
    assert worst <= 1e-6 * norm, f"max |grad difference| {worst:.3e} > 1e-6 x grad norm {norm:.3e}"
