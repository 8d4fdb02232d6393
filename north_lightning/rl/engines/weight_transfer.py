"""How exported weights reach the `vllm serve` sampler servers of a `ServerPool`: `files` (default) or `nccl`.

- `files`: rank 0 writes safetensors under the run directory and every server reloads them in place
  (`/collective_rpc` -> `NorthWorkerExtension`). Works anywhere (CPU CI included) but needs storage shared by
  rank 0 and the sampler nodes, and costs a write plus N reads of the whole model per export.
- `nccl`: rank 0 streams the tensors from its GPU to each server's GPU workers with vLLM's NCCL weight-transfer
  engine (vLLM 0.32: `vllm.distributed.weight_transfer`, the server's RL routes `/init_weight_transfer_engine`,
  `/start_weight_update`, `/update_weights`, `/finish_weight_update`, which `vllm serve` mounts with
  `VLLM_SERVER_DEV_MODE=1` and which need `--weight-transfer-config '{"backend": "nccl"}'`). One NCCL group
  for all live servers (trainer rank 0 + every server's TP x PP x DP workers) and one broadcast per export,
  rendezvous on `master_address:master_port + k` for the k-th group of the run (a new group whenever the set of
  live servers changes): `rl/engines/nccl_group.py`. The first transfer checks each server's `/server_info`: the
  flag, its worker count and its dtype, which the tensors are cast to on the trainer's GPU, one at a time, before
  they are sent. Nothing touches the
  filesystem on the server side, so the sampler nodes need not share storage with the trainer.

Config (`VLLMSidecar(engine="servers", engine_kwargs={...})`):
    weight_transfer: files | nccl
    nccl: {master_address: <host of trainer rank 0, reachable from the sampler nodes; default $MASTER_ADDR, else
           this host's name>, master_port: 29650, packed: true (vLLM's double-buffered packed broadcast),
           timeout_s: 600 (HTTP timeout of the RL routes)}

NCCL needs CUDA on the trainer's rank 0 and on the servers; CPU CI checks the config parsing, the start-up refusal
without CUDA, the `/server_info` preflight against real CPU `vllm serve`s, the sent metadata against vLLM's checks
the rank layout and init payloads against vLLM's rank arithmetic, and `NCCLGroup`'s membership inside a `ServerPool`
(with a named stand-in for the CUDA part), not a transfer: tests/gpu/test_nccl_transfer_gpu.py runs the broadcast
into two servers on a machine with 3 GPUs and the CUDA `vllm`.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.engines.auth import auth_headers

WEIGHT_TRANSFERS = ("files", "nccl")


@dataclass(frozen=True)
class NCCLSettings:
    """`engine_kwargs.nccl` (see the module docstring)."""

    master_address: str | None = None
    master_port: int = 29650
    packed: bool = True
    timeout_s: float = 600.0

    def address(self) -> str:
        return self.master_address or os.environ.get("MASTER_ADDR") or socket.gethostname()


def parse_weight_transfer(weight_transfer: str = "files", nccl: Mapping[str, Any] | None = None) -> NCCLSettings | None:
    """Validate `engine_kwargs.weight_transfer` / `engine_kwargs.nccl`; the NCCL settings, or None for `files`.
    Every error names the offending key."""
    if weight_transfer not in WEIGHT_TRANSFERS:
        raise ValueError(f"engine_kwargs.weight_transfer must be one of {WEIGHT_TRANSFERS}, got {weight_transfer!r}")
    if weight_transfer == "files":
        if nccl:
            raise ValueError("engine_kwargs.nccl applies only to weight_transfer: nccl (weight_transfer is 'files')")
        return None
    if nccl is not None and not isinstance(nccl, Mapping):
        raise ValueError(f"engine_kwargs.nccl must be a mapping, got {type(nccl).__name__}")
    nccl = dict(nccl or {})
    known = [f.name for f in fields(NCCLSettings)]
    unknown = sorted(set(nccl) - set(known))
    if unknown:
        raise ValueError(f"engine_kwargs.nccl: unknown keys {unknown} (known: {known})")
    address, port = nccl.get("master_address"), nccl.get("master_port", NCCLSettings.master_port)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"engine_kwargs.nccl.master_address must be a host name or address, got {address!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"engine_kwargs.nccl.master_port must be a port number (1-65535), got {port!r}")
    if not isinstance(nccl.get("packed", True), bool):
        raise ValueError(f"engine_kwargs.nccl.packed must be true or false, got {nccl['packed']!r}")
    timeout = nccl.get("timeout_s", NCCLSettings.timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"engine_kwargs.nccl.timeout_s must be a positive number of seconds, got {timeout!r}")
    return NCCLSettings(**nccl)


def require_cuda() -> None:
    """`weight_transfer: nccl` sends from the trainer's GPU; refuse at start, naming the alternative."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "engine_kwargs.weight_transfer: nccl streams the weights from the trainer's GPU to the sampler servers "
            "over NCCL and needs CUDA, which this process does not have (torch.cuda.is_available() is False); use "
            "weight_transfer: files (the default: safetensors in the shared run directory, reloaded by each server)")


@dataclass(frozen=True)
class ServerWeightInfo:
    """What a server's `/server_info` says about receiving weights."""

    backend: str | None  # --weight-transfer-config backend, None without the flag
    workers: int  # GPU workers that join the NCCL group: TP x PP (x DP)
    dtype: torch.dtype  # the server's parameter dtype (what to send)


def _keyed_client(base: type) -> type:
    """vLLM's weight-sync HTTP client, sending the run's sampler key (`rl/engines/auth.py`) on every POST."""

    class KeyedWeightSyncClient(base):
        def _post(self, path: str, json: dict[str, Any] | None = None) -> None:
            import requests

            response = requests.post(f"{self.base_url}/{path}", json=json, timeout=self.timeout,
                                     headers=auth_headers())
            response.raise_for_status()

    return KeyedWeightSyncClient


def server_weight_info(base_url: str, timeout: float = 30.0) -> ServerWeightInfo:
    """Read the server's config from its dev route `/server_info` (needs `VLLM_SERVER_DEV_MODE=1`)."""
    url = f"{base_url.rstrip('/').removesuffix('/v1')}/server_info?config_format=json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=auth_headers()), timeout=timeout) as resp:
            config = json.loads(resp.read())["vllm_config"]
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"sampler server {url}: HTTP {err.code} (is VLLM_SERVER_DEV_MODE=1 set for it?)") from err
    parallel = config["parallel_config"]
    backend = (config.get("weight_transfer_config") or {}).get("backend")
    dtype = getattr(torch, str(config["model_config"]["dtype"]).removeprefix("torch."))
    return ServerWeightInfo(backend=backend, dtype=dtype,
                            workers=int(parallel["world_size"]) * int(parallel.get("data_parallel_size", 1)))


def check_nccl_server(base_url: str, info: ServerWeightInfo) -> None:
    if info.backend != "nccl":
        raise RuntimeError(
            f"sampler server {base_url} was started without --weight-transfer-config '{{\"backend\": \"nccl\"}}' "
            f"(its weight transfer backend: {info.backend}); restart it with that flag (`python -m north_lightning "
            "slurm` adds it when the config says weight_transfer: nccl) or use weight_transfer: files")


_SAFETENSORS_INT = {"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                    "BOOL": torch.bool}


def _tensor_source(weights: Mapping[str, torch.Tensor] | str | Path, device: torch.device, dtype: torch.dtype) -> Any:
    """A vLLM `WeightSource` over an HF-named state dict or a checkpoint directory's safetensors; each tensor is
    moved to `device` and floating ones cast to the server's `dtype` only when it is sent (one extra tensor in
    memory at a time). vLLM checks every sent tensor against `metadata()`, so both say the same dtypes."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    if isinstance(weights, (str, Path)):
        from safetensors import safe_open

        files = sorted(Path(weights).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{weights}: no *.safetensors to send")
        meta = []
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    info = f.get_slice(k)
                    meta.append(ParamMeta(k, _SAFETENSORS_INT.get(info.get_dtype(), dtype), tuple(info.get_shape())))

        def pairs() -> Iterator[tuple[str, torch.Tensor]]:
            for path in files:
                with safe_open(str(path), framework="pt") as f:
                    for k in f.keys():
                        yield k, f.get_tensor(k)
    else:
        meta = [ParamMeta(k, dtype if v.is_floating_point() else v.dtype, tuple(v.shape)) for k, v in weights.items()]

        def pairs() -> Iterator[tuple[str, torch.Tensor]]:
            return iter(weights.items())

    class _Source(WeightSource):
        origin = "dict" if isinstance(weights, Mapping) else str(weights)  # for logs and tests

        def metadata(self) -> list[ParamMeta]:
            return meta

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in pairs():
                wire = dtype if tensor.is_floating_point() else tensor.dtype
                yield name, tensor.detach().to(device=device, dtype=wire).contiguous()

    return _Source()
