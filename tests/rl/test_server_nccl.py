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


def test_pool_broadcasts_to_all_live_servers_in_one_group_and_reforms_it(nccl_server, tmp_path, monkeypatch):
    """Server 0 is reached through a forwarder that goes away and comes back (the same server behind it): one group
    of every live server per membership, each export one send to all of them, a new group on a fresh port when the
    membership changes, the members of the old one released first."""
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
        assert log == [("group", 29650, {fwd.url: 1, url: 2}, 3), ("send", [fwd.url, url], "dict")]
        assert not (tmp_path / "w").exists()  # nothing written by the pool: the weights travel over the link
        assert both_serve(new1)
        assert pool.calls == [1, 1] and pool.policy_version == 1

        fwd.close()  # server 0 disappears: the group is broken and closed here, nothing released there
        with pytest.raises(EngineDied, match=fwd.url):
            for _ in range(2):
                pool.generate([PROMPT], max_tokens=2)
        assert list(pool.dead) == [fwd.url] and log[-1] == ("close", 29650)
        del log[:]
        pool.load_weights(to_hf_state_dict(new2), version=2)  # server 0 still away: a group of the live one
        assert log == [("release", url), ("group", 29651, {url: 1}, 2), ("send", [url], "dict")]
        assert max_logprob_error(new2, check)[0] < 1e-4

        fwd.restore()  # server 0 is back (a new process, as far as NCCL knows)
        del log[:]
        pool.load_weights(to_hf_state_dict(new3), version=3)  # one new group of both, the returning one last
        assert log == [("close", 29651), ("release", url), ("group", 29652, {url: 1, fwd.url: 2}, 3),
                       ("send", [url, fwd.url], "dict")]
        assert not pool.dead and both_serve(new3)
        del log[:]
        pool.load_weights(to_hf_state_dict(new1), version=4)  # same members: the same group, one more send
        assert log == [("send", [url, fwd.url], "dict")]

        fwd.close()  # gone again; back before the next export: after a state-dict export there is nothing to resend
        with pytest.raises(EngineDied):
            for _ in range(2):
                pool.generate([PROMPT], max_tokens=2)
        fwd.restore()
        pool.restart()
        assert list(pool.dead) == [fwd.url]  # it rejoins at the next export
        del log[:]
        pool.reload(model_dir)  # the start weights from a directory, streamed by this process (live servers)
        assert log == [("release", url), ("group", 29653, {url: 1}, 2), ("send", [url], str(model_dir))]
        assert max_logprob_error(model, check)[0] < 1e-4
        del log[:]
        pool.restart()  # now there is something to resend: the directory, to a new group of both
        assert not pool.dead and log == [("close", 29653), ("release", url), ("group", 29654, {url: 1, fwd.url: 2}, 3),
                                         ("send", [url, fwd.url], str(model_dir))]
        assert both_serve(model)
    finally:
        fwd.close()
        pool.close()
        check.close()
    assert log[-3:] == [("close", 29654), ("release", fwd.url), ("release", url)]
