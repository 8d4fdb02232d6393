"""`weight_transfer: nccl` on the CPU, against a real `vllm serve` started the way `slurm` starts sampler servers
for it (`--weight-transfer-config '{"backend": "nccl"}'`: the flag only declares the backend, the NCCL group is made
when a trainer joins): the `/server_info` preflight, and the `ServerPool`'s NCCL bookkeeping with
`FilesStandInForNCCL` in place of the broadcast, which needs CUDA at both ends (tests/gpu/test_nccl_transfer_gpu.py
runs the real one; test_server.py has the refusal by a server started without the flag).
"""

import pytest
import torch

from north_lightning.envs.socket_proxy import SocketProxy
from sampler_servers import PROMPT, FilesStandInForNCCL, max_logprob_error, perturbed, tiny_cpu_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def nccl_server(tmp_path_factory):
    """(model, its HF dir, base URL) of a `vllm serve` that accepts NCCL weight transfers."""
    with tiny_cpu_server(tmp_path_factory.mktemp("nccl_server"),
                         ("--weight-transfer-config", '{"backend": "nccl"}')) as served:
        yield served


def test_preflight_accepts_the_server_and_reads_its_workers_and_dtype(nccl_server):
    from north_lightning.rl.engines.weight_transfer import check_nccl_server, server_weight_info

    url = nccl_server[2]
    info = server_weight_info(url + "/v1")
    assert info.backend == "nccl" and info.workers == 1 and info.dtype == torch.float32
    check_nccl_server(url, info)


def test_pool_sends_to_live_servers_and_joins_a_returning_one_anew(nccl_server, tmp_path, monkeypatch):
    """Server 0 is reached through a forwarder that goes away and comes back (the same server behind it)."""
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import OpenAIServerPolicy, ServerPool
    from north_lightning.rl.engines.inprocess import EngineDied

    model, model_dir, url = nccl_server
    log = FilesStandInForNCCL.install(monkeypatch, model_dir)
    port = int(url.rsplit(":", 1)[1])
    fwd = SocketProxy(port, scheme="http").start()  # server 0's address; closed and restored below
    pool = ServerPool([fwd.url, url], model_dir=model_dir, weights_dir=tmp_path / "w", timeout=30,
                      weight_transfer="nccl", nccl={"master_address": "127.0.0.1", "master_port": 29650})
    check = OpenAIServerPolicy(url, model_dir=model_dir)  # server 1 directly

    def both_serve(weights_of) -> bool:  # two calls: the pool's round robin puts one on each server
        return all(max_logprob_error(weights_of, pool)[0] < 1e-4 for _ in range(2))

    try:
        new1, new2, new3 = (perturbed(model, s) for s in (11, 12, 13))
        pool.load_weights(to_hf_state_dict(new1), version=1)
        assert log == [("open", fwd.url, 29650), ("send", fwd.url, "dict"), ("open", url, 29651), ("send", url, "dict")]
        assert not (tmp_path / "w").exists()  # nothing written by the pool: the weights travel over the link
        assert both_serve(new1)
        assert pool.calls == [1, 1] and pool.policy_version == 1

        fwd.close()  # server 0 disappears: its link is dropped, not released (there is nobody to release it)
        with pytest.raises(EngineDied, match=fwd.url):
            for _ in range(2):
                pool.generate([PROMPT], max_tokens=2)
        assert list(pool.dead) == [fwd.url] and log[-1] == ("close", fwd.url, False)
        del log[:]
        pool.load_weights(to_hf_state_dict(new2), version=2)  # server 0 still away: skipped, not an error
        assert log == [("send", url, "dict")] and max_logprob_error(new2, check)[0] < 1e-4

        fwd.restore()  # server 0 is back (a new process, as far as NCCL knows)
        del log[:]
        pool.load_weights(to_hf_state_dict(new3), version=3)  # it rejoins on a fresh port: 29650 + 0 + 1 * 2
        assert log == [("send", url, "dict"), ("open", fwd.url, 29652), ("send", fwd.url, "dict")]
        assert not pool.dead and both_serve(new3)

        fwd.close()  # gone again; back before the next export: after a state-dict export there is nothing to resend
        with pytest.raises(EngineDied):
            for _ in range(2):
                pool.generate([PROMPT], max_tokens=2)
        fwd.restore()
        pool.restart()
        assert list(pool.dead) == [fwd.url]  # it rejoins at the next export
        del log[:]
        pool.reload(model_dir)  # the start weights from a directory, streamed by this process (live servers)
        assert log == [("send", url, str(model_dir))] and max_logprob_error(model, check)[0] < 1e-4
        pool.restart()  # now there is something to resend: the directory, on a fresh port (29650 + 0 + 2 * 2)
        assert not pool.dead and log[1:] == [("open", fwd.url, 29654), ("send", fwd.url, str(model_dir))]
        assert both_serve(model)
    finally:
        fwd.close()
        pool.close()
        check.close()
    assert sorted(e for e in log if e[0] == "close") == sorted([("close", fwd.url, True), ("close", url, True)])
