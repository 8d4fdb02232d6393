"""Scripted policies: stand-ins for a model that emit known actions as real token ids.

`OraclePolicy` replays each task's reference solution in a harness's format (rendered by that harness and the
chat template, tokenised by the real tokenizer), so the agent loop, the environment and the verifier are
exercised end to end without a trained model (tests, `bench/env_throughput.py`, the eval CLI's smoke test).
`ScriptedPolicy` returns given response texts (e.g. hostile commands in tests). Both are stateless: the turn
is read off the prompt, so they serve concurrent episodes.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from north_lightning.formats.harnesses.base import Harness, ToolCall
from north_lightning.formats.records import Observation, Step, Trajectory
from north_lightning.envs.session import task_image
from north_lightning.envs.tasks import HarborTask, SWETask, Task
from north_lightning.envs.toy_tasks import make_toy_task
from north_lightning.rl.policy import Completion
from north_lightning.rl.rollout import make_harness

TURN_MARKER = "<|CHATBOT_TOKEN|>"  # the tiny tokenizer's assistant-turn token; counted to find the turn index


def oracle_commands(task: Task) -> list[str]:
    """The reference solution as shell commands: a toy task's oracle, a solve.sh body, or the SWE patch
    applied with `git apply`."""
    if isinstance(task, SWETask):
        return [f"cat > /tmp/fix.patch <<'NL_EOF'\n{task.patch}NL_EOF\ngit apply /tmp/fix.patch"]
    meta = task.metadata
    if "family" in meta and "params_json" in meta:
        return list(make_toy_task(meta["family"], json.loads(meta["params_json"])).oracle)
    assert isinstance(task, HarborTask)
    if task.solution_script is None:
        raise FileNotFoundError(f"{task.path}/solution/solve.sh: missing, no oracle for {task.task_id}")
    body = [line for line in task.solution_script.read_text().splitlines()
            if line.strip() and not line.startswith("#!") and line.strip() != "set -e"]
    return body if len(body) == 1 else ["bash <<'NL_EOF'\nset -e\n" + "\n".join(body) + "\nNL_EOF"]


def assistant_text(tokenizer: Any, message: dict[str, Any], tools: list[dict[str, Any]] | None) -> str:
    """What the model would generate for `message`: the chat template's rendering of the assistant turn
    after the generation prompt, end-of-turn token included."""
    probe = [{"role": "user", "content": "x"}]
    prefix = tokenizer.apply_chat_template(probe, tools=tools, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(probe + [message], tools=tools, tokenize=False)
    if not full.startswith(prefix):
        raise ValueError("chat template renders the assistant turn inconsistently with its generation prompt")
    return full[len(prefix):]


def oracle_responses(harness: Harness, tokenizer: Any, task: Task) -> list[str]:
    """The assistant turns (as text) that solve `task` in `harness`'s format, submit included."""
    steps = [Step(calls=(ToolCall("bash", {"command": cmd}),), observations=(Observation(""),))
             for cmd in oracle_commands(task)]
    steps.append(Step(calls=(ToolCall("submit", {}),)))
    messages = harness.render(Trajectory(id=task.task_id, task=task.instruction, source="oracle", steps=tuple(steps)))
    tools = harness.tools()
    return [assistant_text(tokenizer, m, tools) for m in messages if m["role"] == "assistant"]


class ScriptedPolicy:
    """Answers turn i of every episode with `responses(prompt_text, i)` (or `responses[i]`, the last one
    repeated), encoded with the real tokenizer. Logprobs are 0.0: a deterministic policy's tokens have
    probability 1."""

    def __init__(self, tokenizer: Any, responses: list[str] | Callable[[str, int], str], policy_version: int = 0):
        self.tokenizer = tokenizer
        self.responses = responses
        self.policy_version = policy_version
        self.calls = 0

    def _text(self, prompt_text: str, turn: int) -> str:
        if callable(self.responses):
            return self.responses(prompt_text, turn)
        return self.responses[min(turn, len(self.responses) - 1)]

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        out = []
        for prompt in prompts:
            self.calls += 1
            prompt_text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            text = self._text(prompt_text, prompt_text.count(TURN_MARKER) - 1)
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            finish = "stop"
            if len(ids) > max_tokens:
                ids, finish = ids[:max_tokens], "length"
            out.append(Completion(ids, [0.0] * len(ids), self.tokenizer.decode(ids, skip_special_tokens=False),
                                  finish))
        return out


class OraclePolicy(ScriptedPolicy):
    """Solves every task it was given, in `harness`'s format (a name, or a name per task kind): the task is
    recognised by its instruction in the prompt, the turn by the number of assistant turns so far."""

    def __init__(self, tokenizer: Any, harness: str | Harness | dict[str, str], tasks: list[Task],
                 policy_version: int = 0):
        def harness_for(task: Task) -> Harness:  # one harness, or one per task kind ("terminal", "swe")
            return make_harness(harness[task.kind] if isinstance(harness, dict) else harness, task)

        for task in tasks:  # resolve work dirs that come from the image (the harness prompt names them)
            if task.workdir is None:
                task_image(task)
        scripts = {task.instruction: oracle_responses(harness_for(task), tokenizer, task) for task in tasks}
        # longest instruction first, so an instruction that contains another one wins
        ordered = sorted(scripts.items(), key=lambda kv: -len(kv[0]))

        def respond(prompt_text: str, turn: int) -> str:
            for instruction, responses in ordered:
                if instruction in prompt_text:
                    return responses[min(turn, len(responses) - 1)]
            raise KeyError("OraclePolicy: the prompt names none of its tasks")

        super().__init__(tokenizer, respond, policy_version)
