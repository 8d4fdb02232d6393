"""`weight_transfer: nccl`: one NCCL group for all the sampler servers of a pool, one broadcast per export.

The group is trainer rank 0 plus every GPU worker of every live server: rank 0 sends, server i's workers sit at
ranks `offset_i .. offset_i + workers_i - 1` with `offset_0 = 1` and `offset_{i+1} = offset_i + workers_i`
(`rank_layout`; a server's workers are TP x PP x DP, `/server_info`). Each server is told its own `rank_offset`
and the common `world_size` and rendezvous (`/init_weight_transfer_engine`); vLLM's worker adds its own
`dp_rank * (TP x PP) + rank` to the offset (vLLM 0.32, `nccl_common.worker_init_process_group`), so the ranks are
disjoint and cover 1 .. world - 1. One export is then vLLM's round once, fanned out: `/start_weight_update` on
every server, `/update_weights` on every server at once (each blocks in the receive) while rank 0 broadcasts
every tensor a single time (vLLM's `NCCLTrainerWeightTransferEngine`, packed and double-buffered by default),
then `/finish_weight_update` on every server. With N servers the trainer's link carries the model once, not N
times one after another.

Membership: the group is formed at the first export over the live servers; when the set of live servers
changes (a server died, or came back: a restarted server is a new process), the old group is released on the
servers still alive and a new one is formed on a fresh port (`master_port + k` for the k-th group of the run:
the store of a broken group may still hold the old one). A failed transfer drops the group; the next export forms
a new one. A server that dies inside a broadcast can leave the others blocked in NCCL (no timeout there): the
pool then reports the failure, and those servers have to be restarted.

GPU-only. CPU CI checks `rank_layout` and the payloads against vLLM's own rank arithmetic, and the pool's
membership bookkeeping with `NCCLGroup` in place and a named stand-in for the CUDA part (`_trainer_engine`);
tests/gpu/test_nccl_transfer_gpu.py runs the broadcast into two servers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.engines.inprocess import EngineDied
from north_lightning.rl.engines.weight_transfer import (NCCLSettings, ServerWeightInfo, _keyed_client, _tensor_source,
                                                        check_nccl_server, server_weight_info)

log = logging.getLogger(__name__)
__all__ = ["rank_layout", "FanOutClient", "GroupError", "NCCLGroup"]


def rank_layout(workers: Sequence[int]) -> tuple[list[int], int]:
    """(rank offset of each server's first worker, world size) for trainer rank 0 + these servers' workers."""
    offsets, rank = [], 1
    for n in workers:
        if n < 1:
            raise ValueError(f"a sampler server reports {n} GPU workers; it needs at least one")
        offsets.append(rank)
        rank += n
    return offsets, rank


class GroupError(RuntimeError):
    """Some servers of a fanned-out call failed: `errors` maps each one's index in the pool to its exception."""

    def __init__(self, errors: dict[int, BaseException], urls: Mapping[int, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{urls[i]}: {type(e).__name__}: {e}" for i, e in errors.items()))


class FanOutClient:
    """vLLM's weight-sync client protocol (`HTTPVLLMWeightSyncClient`) over several servers at once, so vLLM's
    single-server trainer engine drives the whole group: every call goes to every member concurrently and returns
    when all have answered. The init payload is rewritten per server with its own `rank_offset`."""

    def __init__(self, urls: Mapping[int, str], offsets: Sequence[int], timeout: float) -> None:
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient

        self.urls = dict(urls)  # pool index -> base URL, in rank order
        self.offsets = dict(zip(self.urls, offsets))
        self.clients = {i: _keyed_client(HTTPVLLMWeightSyncClient)(u, timeout=timeout) for i, u in self.urls.items()}
        self.sent_init: dict[int, dict[str, Any]] = {}  # what each server was told at the rendezvous

    def init_payloads(self, init_info: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return {i: {**init_info, "rank_offset": self.offsets[i]} for i in self.urls}

    def _all(self, call: Callable[[Any, int], None]) -> None:
        with ThreadPoolExecutor(max_workers=len(self.clients), thread_name_prefix="nccl-fanout") as pool:
            futures = {i: pool.submit(call, c, i) for i, c in self.clients.items()}
        errors = {i: f.exception() for i, f in futures.items() if f.exception() is not None}
        if errors:
            raise GroupError(errors, self.urls)  # type: ignore[arg-type]

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.sent_init = self.init_payloads(init_info)
        self._all(lambda c, i: c.init_weight_transfer_engine(self.sent_init[i]))

    def start_weight_update(self) -> None:
        self._all(lambda c, i: c.start_weight_update())

    def update_weights(self, update_info: Any) -> None:
        self._all(lambda c, i: c.update_weights(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all(lambda c, i: c.finish_weight_update(weight_version))

    def shutdown_weight_transfer_engine(self) -> None:
        self._all(lambda c, i: c.shutdown_weight_transfer_engine())


def _unreachable(err: BaseException) -> bool:
    """Refused / reset / timed out (requests' errors are OSErrors too, but an HTTP error means it answered)."""
    import requests

    return isinstance(err, (OSError, EngineDied)) and not isinstance(err, requests.HTTPError)


class NCCLGroup:
    """Trainer rank 0's NCCL group with the live servers of a `ServerPool` (see the module docstring)."""

    def __init__(self, settings: NCCLSettings, urls: Sequence[str]) -> None:
        self.settings = settings
        self.urls = [u.rstrip("/").removesuffix("/v1") for u in urls]  # the RL routes live at the root
        self.members: tuple[int, ...] | None = None  # servers in the current group (None: no group)
        self.engine: Any = None
        self.client: FanOutClient | None = None
        self.formed = 0  # groups formed so far: the k-th rendezvouses on master_port + k
        self.joined: set[int] = set()  # servers holding a group we have not released
        self.infos: dict[int, ServerWeightInfo] = {}

    def _preflight(self, members: Sequence[int]) -> dict[int, BaseException]:
        errors: dict[int, BaseException] = {}
        for i in members:
            if i in self.infos:
                continue
            try:
                info = server_weight_info(self.urls[i], timeout=self.settings.timeout_s)
                check_nccl_server(self.urls[i], info)
                self.infos[i] = info
            except BaseException as err:  # sorted out by the pool (dead or refused)
                errors[i] = EngineDied(f"sampler server {self.urls[i]} unreachable: {err}") \
                    if _unreachable(err) else err
        dtypes = {self.infos[i].dtype for i in members if i in self.infos}
        if len(dtypes) > 1:
            raise RuntimeError(f"weight_transfer: nccl sends one dtype to every server, but the servers run "
                               f"{sorted(map(str, dtypes))}; start them all with the same --dtype")
        return errors

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    def _trainer_engine(self, init: Any, client: FanOutClient, source: Any) -> Any:
        """Open rank 0 and have every member join (vLLM's trainer engine; CUDA). Tests swap this out."""
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

        return NCCLTrainerWeightTransferEngine.trainer_init(init, client=client, source=source)

    def _form(self, members: tuple[int, ...], source: Any) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        self._leave()
        offsets, world = rank_layout([self.infos[i].workers for i in members])
        port = self.settings.master_port + self.formed
        self.formed += 1
        self.client = FanOutClient({i: self.urls[i] for i in members}, offsets, self.settings.timeout_s)
        init = NCCLTrainerInitInfo(master_address=self.settings.address(), master_port=port, world_size=world,
                                   packed=self.settings.packed, rank=0)
        log.info("NCCL weight-transfer group %d on port %d: %s", self.formed, port,
                 ", ".join(f"{self.urls[i]} ranks {o}-{o + self.infos[i].workers - 1}"
                           for i, o in zip(members, offsets)))
        self.joined |= set(members)  # before the rendezvous: a half-joined server is released next time
        self.engine = self._trainer_engine(init, self.client, source)
        self.members = members

    def send(self, members: Sequence[int],
             weights: Mapping[str, torch.Tensor] | str | Path) -> dict[int, BaseException]:
        """Broadcast the weights once to every server in `members` (pool indices); returns the servers that failed
        (unreachable ones as `EngineDied`), empty when all took them. Any failure drops the group."""
        errors = self._preflight(members)
        members = tuple(i for i in members if i not in errors)
        if not members:
            return errors
        dtype = self.infos[members[0]].dtype
        source = _tensor_source(weights, self._device(), dtype)
        try:
            if self.members is None or set(self.members) != set(members):  # rank order: as formed
                self._form(members, source)
            else:
                self.engine.source = source
            self.engine.send_weights()
        except BaseException as err:
            self.drop()
            failed = err.errors if isinstance(err, GroupError) else {i: err for i in members}
            for i, e in failed.items():
                errors[i] = EngineDied(f"sampler server {self.urls[i]} unreachable (NCCL weight transfer): {e}") \
                    if _unreachable(e) else e
            if isinstance(err, GroupError) and len(failed) < len(members):  # the others waited for them
                for i in members:
                    errors.setdefault(i, RuntimeError(f"the NCCL group failed on {list(failed.values())[0]}"))
        return errors

    def forget(self, i: int) -> None:
        """Server i is dead (or restarted: a new process): nothing to release there, and the group is broken."""
        self.joined.discard(i)
        self.infos.pop(i, None)
        if self.members is not None and i in self.members:
            self.drop()

    def drop(self) -> None:
        """Close rank 0's end of the group; the servers' ends are released when the next group forms."""
        if self.engine is not None:
            try:
                self.engine.shutdown()
            except Exception as err:  # best effort: a broken group may not close cleanly
                log.warning("closing the NCCL weight-transfer group failed: %s", err)
        self.engine, self.members = None, None

    def _leave(self) -> None:
        """Drop our end, then release every server that still holds an earlier group (best effort)."""
        self.drop()
        for i in sorted(self.joined):
            try:
                self._release(i)
            except Exception as err:  # it may be gone meanwhile
                log.warning("sampler server %s: releasing the NCCL group failed: %s", self.urls[i], err)
        self.joined.clear()

    def _release(self, i: int) -> None:
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient

        _keyed_client(HTTPVLLMWeightSyncClient)(self.urls[i], timeout=30).shutdown_weight_transfer_engine()

    def close(self) -> None:
        self._leave()
