"""SLURM rendering: the scripts parse, carry the right node/task counts and requeue flags, and, run with stand-ins
for the SLURM commands (named fakes: there is no SLURM cluster in CI), launch `srun ... fit` with the resume
checkpoint that a requeued job must pick up."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from north_lightning.cli import slurm


def _render(tmp_path: Path, *argv: str) -> str:
    config = tmp_path / "cfg.yaml"
    config.write_text("trainer:\n  max_steps: 5\n")
    out = tmp_path / "job.sh"
    rc = slurm.main(["--config", str(config), "--run-dir", str(tmp_path / "run"), "--out", str(out), *argv])
    assert rc == 0
    text = out.read_text()
    subprocess.run(["bash", "-n", str(out)], check=True)
    return text


def _sbatch(text: str) -> list[str]:
    return re.findall(r"^#SBATCH (.+)$", text, flags=re.M)


@pytest.mark.parametrize("nodes,gpus", [(1, 8), (4, 8), (16, 4)])
def test_sft_render(tmp_path: Path, nodes: int, gpus: int) -> None:
    text = _render(tmp_path, "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--partition", "gpu")
    directives = _sbatch(text)
    assert f"--nodes={nodes}" in directives
    assert f"--ntasks-per-node={gpus}" in directives  # Lightning's SLURMEnvironment: one task per GPU
    assert f"--gpus-per-node={gpus}" in directives
    assert "--signal=USR1@90" in directives and "--requeue" in directives and "--partition=gpu" in directives
    srun = re.search(r"^srun .*?\n(?:  .*\n)*", text, flags=re.M).group(0)
    assert "-m north_lightning fit" in srun
    assert f"--trainer.num_nodes={nodes}" in srun and f"--trainer.devices={gpus}" in srun
    assert '"${CKPT_ARGS[@]}"' in srun
    # no directive may follow the first command: sbatch stops reading #SBATCH lines there
    first_command = text.index("set -euo pipefail")
    assert text.rfind("#SBATCH") < first_command


def test_rl_render_is_heterogeneous(tmp_path: Path) -> None:
    text = _render(tmp_path, "--nodes", "2", "--sampler-nodes", "3", "--sampler-model", "/ckpt/sft_hf")
    directives = _sbatch(text)
    het = directives.index("hetjob")
    assert "--nodes=2" in directives[:het] and "--ntasks-per-node=8" in directives[:het]
    assert "--nodes=3" in directives[het:] and "--ntasks-per-node=1" in directives[het:]
    assert "--signal=USR1@90" in directives[:het] and "--requeue" in directives[:het]
    assert re.search(r"srun --het-group=1 .*\n\s+vllm serve \"\$SAMPLER_MODEL\"", text)
    assert "--tensor-parallel-size=8" in text
    assert re.search(r"srun --het-group=0 .*\n\s+python -m north_lightning fit", text)


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        slurm.main(["--config", str(tmp_path / "missing.yaml"), "--nodes", "1"])
    with pytest.raises(KeyError, match="placeholder"):
        slurm.render_template("{{nodes}} {{oops}}", {"nodes": "1"})
    with pytest.raises(KeyError, match="never used"):
        slurm.render_template("{{nodes}}", {"nodes": "1", "extra": "x"})


def _fake_bin(tmp_path: Path, log: Path) -> dict[str, str]:
    """Fake `srun`/`scontrol`/`curl` (no SLURM here): srun logs its argv, scontrol expands host lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "srun": f'#!/bin/bash\necho "srun $*" >> {log}\n',
        "scontrol": '#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && tr "," "\\n" <<< "$3"\n',
        "curl": "#!/bin/bash\nexit 0\n",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}


def test_requeued_job_resumes_from_newest_checkpoint(tmp_path: Path) -> None:
    text = _render(tmp_path, "--nodes", "2")
    script = tmp_path / "job.sh"
    log = tmp_path / "srun.log"
    env = _fake_bin(tmp_path, log)

    subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path)  # first start: nothing to resume
    assert "--ckpt_path" not in log.read_text()

    run = tmp_path / "run"
    last = run / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_text("x")
    hpc = run / "hpc_ckpt_1.ckpt"
    hpc.mkdir()  # sharded checkpoint: a directory
    (hpc / "shard").write_text("x")
    os.utime(last, (time.time() - 100, time.time() - 100))
    log.unlink()
    subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path)
    assert f"--ckpt_path {hpc}" in log.read_text()
    assert "srun --kill-on-bad-exit=1" in log.read_text() and text


def test_rl_job_exports_sampler_urls(tmp_path: Path) -> None:
    _render(tmp_path, "--nodes", "1", "--sampler-nodes", "2", "--sampler-model", "/ckpt/sft_hf")
    log = tmp_path / "srun.log"
    env = _fake_bin(tmp_path, log) | {"SLURM_JOB_NODELIST_HET_GROUP_0": "t0",
                                      "SLURM_JOB_NODELIST_HET_GROUP_1": "s0,s1"}
    result = subprocess.run(["bash", str(tmp_path / "job.sh")], check=True, env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    assert "samplers: http://s0:8000/v1,http://s1:8000/v1" in result.stdout
    calls = log.read_text()
    assert "--het-group=1" in calls and "serve /ckpt/sft_hf" in calls and "--het-group=0" in calls


def test_render_reports_the_memory_plan(tmp_path: Path, capsys) -> None:
    config = tmp_path / "big.yaml"
    config.write_text("trainer:\n  strategy:\n    init_args: {expert_parallel_size: 8}\n"
                      "model:\n  init_args: {model: north_mini_code_30b}\ndata:\n  init_args: {seq_len: 65536}\n")
    run = ["--config", str(config), "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "job.sh")]
    slurm.main([*run, "--nodes", "1"])
    assert "DOES NOT FIT" in capsys.readouterr().err
    slurm.main([*run, "--nodes", "2"])
    assert "(fits; seq_len=65536, ep=8)" in capsys.readouterr().err


def _rl_config(tmp_path: Path, engine_kwargs: dict) -> Path:
    import yaml

    config = tmp_path / "rl.yaml"
    sidecar = {"class_path": "north_lightning.callbacks.vllm_sidecar.VLLMSidecar",
               "init_args": {"envs": [{"name": "t", "tasks": "toy:train:1"}], "engine": "servers",
                             "engine_kwargs": engine_kwargs}}
    config.write_text(yaml.safe_dump({"trainer": {"max_steps": 5, "callbacks": [sidecar]}}))
    return config


def test_rl_job_starts_servers_for_nccl_weight_transfer_when_the_config_asks(tmp_path: Path) -> None:
    log = tmp_path / "srun.log"
    env = _fake_bin(tmp_path, log) | {"SLURM_JOB_NODELIST_HET_GROUP_0": "t0", "SLURM_JOB_NODELIST_HET_GROUP_1": "s0"}
    flag = """--weight-transfer-config '{"backend": "nccl"}'"""
    for kwargs, expected in (({"weight_transfer": "nccl", "nccl": {"master_port": 29700}}, True),
                             ({"weight_transfer": "files"}, False), ({}, False)):
        out = tmp_path / "job.sh"
        args = ["--config", str(_rl_config(tmp_path, kwargs)), "--run-dir", str(tmp_path / "run"), "--nodes", "1",
                "--sampler-nodes", "1", "--sampler-model", "/ckpt/sft_hf", "--out", str(out)]
        assert slurm.main(args) == 0
        text = out.read_text()
        assert (flag in text) is expected, kwargs
        log.unlink(missing_ok=True)
        subprocess.run(["bash", str(out)], check=True, env=env, cwd=tmp_path, capture_output=True)
        serve = next(line for line in log.read_text().splitlines() if "--het-group=1" in line)
        assert ("--weight-transfer-config {\"backend\": \"nccl\"}" in serve) is expected, serve  # srun's argv
    # given by hand in --sampler-args: not twice
    config = _rl_config(tmp_path, {"weight_transfer": "nccl"})
    assert slurm.main(["--config", str(config), "--run-dir", str(tmp_path / "run"), "--nodes", "1", "--sampler-nodes",
                       "1", "--sampler-model", "/m", "--out", str(out), "--sampler-args", flag]) == 0
    assert out.read_text().count(flag) == 1
    with pytest.raises(SystemExit, match="engine_kwargs.weight_transfer must be one of"):
        slurm.main(["--config", str(_rl_config(tmp_path, {"weight_transfer": "rdma"})), "--nodes", "1",
                    "--sampler-nodes", "1", "--sampler-model", "/m", "--run-dir", str(tmp_path / "run")])


def test_rl_render_takes_the_sampler_servers_flags_from_the_placement(tmp_path: Path, capsys) -> None:
    out = tmp_path / "job.sh"
    assert slurm.main(["--config", "configs/north_mini_code/rl.yaml", "--nodes", "8", "--run-dir",
                       str(tmp_path / "run"), "--out", str(out), "--sampler-model", "/ckpt/hf"]) == 0
    text = out.read_text()
    subprocess.run(["bash", "-n", str(out)], check=True)
    directives = _sbatch(text)
    assert "--nodes=4" in directives[directives.index("hetjob"):]  # placement.sampler_nodes
    assert ("--tensor-parallel-size=4 --data-parallel-size=2 --max-model-len=131072 "
            f"--kv-cache-memory-bytes={48 * 2**30} --enable-expert-parallel") in text
    assert "RL placement: accepted" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="placement says 4 sampler node"):
        slurm.main(["--config", "configs/north_mini_code/rl.yaml", "--nodes", "8", "--sampler-nodes", "2",
                    "--run-dir", str(tmp_path / "run"), "--out", str(out)])
