"""OpenCode: native function calling with typed tools and camelCase arguments, JSON tool results.

The `bash` tool follows OpenCode as published today (anomalyco/opencode, formerly sst/opencode, commit
a6fd1bc3cc2e417fc537b8edeeb54f235b0c60f7, `packages/opencode/src/tool/shell/prompt.ts`):
`bash{command, timeout?, workdir?}` with `timeout` a positive number of milliseconds and `workdir` the
directory to run in (OpenCode's prompt tells the model to use it instead of `cd`); the `description` field of
earlier releases is gone from the schema, and is still accepted here so older trajectories parse.
(`run_in_background` is left out: the sandbox has no job control to back it, so a call using it is refused
as an unknown argument rather than silently run in the foreground.) The other tools keep the shapes of
OpenCode's tool definitions: `read{filePath, offset?, limit?}`, `write{filePath, content}`,
`edit{filePath, oldString, newString, replaceAll?}`, `grep{pattern, path?, include?}`, `glob{pattern, path?}`,
`todowrite{todos}`, `task{description, prompt, subagent_type}`. Several calls per reply are allowed (OpenCode
runs them in parallel); the agent finishes by replying with text and no tool call. A tool result reaches the
model as the tool's output text only (OpenCode's session code turns a completed tool part into a
`tool-result` whose output is `{type: "text", value: part.state.output}`); the metadata OpenCode keeps beside
it (exit code, description) is for its UI.
"""

from __future__ import annotations

from typing import Any

from north_lightning.formats.harnesses.base import Action, FormatError, ToolCall, check_record_harness
from north_lightning.formats.harnesses.common import (
    function_tool,
    maybe_shuffled,
    openai_tool_calls,
    parse_native_tool_calls,
    pick,
    rng_for,
)

_S = {"type": "string"}
_I = {"type": "integer"}
TODO_ITEM = {
    "type": "object",
    "properties": {
        "content": _S,
        "status": {"type": "string", "enum": ["pending", "in_progress", "completed", "cancelled"]},
        "priority": {"type": "string", "enum": ["high", "medium", "low"]},
        "id": _S,
    },
    "required": ["content", "status", "priority", "id"],
}
TOOLS = [
    function_tool("bash", "Execute a bash command with an optional timeout (ms). All commands run in the working "
                  "directory by default; use the `workdir` parameter instead of `cd` to run elsewhere.",
                  {"command": {**_S, "description": "The command to execute"},
                   "timeout": {**_I, "minimum": 1, "description": "Optional timeout in milliseconds"},
                   "workdir": {**_S, "description": "The working directory to run the command in. Defaults to the "
                                                    "current directory. Use this instead of 'cd' commands."},
                   "description": {**_S, "description": "What the command does, in 5-10 words (older OpenCode)."}},
                  ["command"]),
    function_tool("read", "Read a file; returns numbered lines. `offset`/`limit` select a line window.",
                  {"filePath": _S, "offset": _I, "limit": _I}, ["filePath"]),
    function_tool("write", "Write a file, replacing it if it exists.", {"filePath": _S, "content": _S},
                  ["filePath", "content"]),
    function_tool("edit", "Replace `oldString` with `newString` in a file; `oldString` must be unique unless "
                  "`replaceAll` is true.", {"filePath": _S, "oldString": _S, "newString": _S,
                                            "replaceAll": {"type": "boolean"}},
                  ["filePath", "oldString", "newString"]),
    function_tool("grep", "Search file contents with a regular expression.", {"pattern": _S, "path": _S,
                                                                              "include": _S}, ["pattern"]),
    function_tool("glob", "Find files by glob pattern, newest first.", {"pattern": _S, "path": _S}, ["pattern"]),
    function_tool("todowrite", "Write the session's todo list.", {"todos": {"type": "array", "items": TODO_ITEM}},
                  ["todos"]),
    function_tool("task", "Launch a sub-agent for a self-contained multi-step task.",
                  {"description": _S, "prompt": _S, "subagent_type": _S},
                  ["description", "prompt", "subagent_type"]),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOLS]

SYSTEM_PROMPTS = [
    "You are opencode, an interactive CLI agent that helps users with software engineering tasks. Use the "
    "tools available to you to inspect and change the project. Be concise; when the task is done, reply "
    "with a short summary and no tool call.\n\n<env>\nWorking directory: {workdir}\nPlatform: linux\n</env>",
    "You are opencode, a coding agent running in the user's terminal. Read before you edit, prefer the "
    "edit tool over rewriting files, and verify your changes. Finish with a brief summary.\n\n<env>\n"
    "Working directory: {workdir}\nPlatform: linux\n</env>",
    "You are opencode, an agent for software tasks. Solve the user's request with the provided tools, keep "
    "answers short, and stop calling tools once the work is complete.\n\n<env>\nWorking directory: "
    "{workdir}\nPlatform: linux\n</env>",
]
DONE = ["Done: the task is complete.", "The task is finished.", "All changes are in place."]


class OpenCodeHarness:
    name = "opencode"

    def __init__(self, workdir: str = "/app"):
        self.workdir = workdir

    def tools(self) -> list[dict[str, Any]] | None:
        return self.tools_for(None)

    def tools_for(self, seed: int | None) -> list[dict[str, Any]] | None:
        return maybe_shuffled(TOOLS, rng_for(seed))

    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        if isinstance(response, str):
            return Action((), response.strip(), submit=True)
        if not response.get("tool_calls"):
            return Action((), (response.get("content") or "").strip(), submit=True)
        return parse_native_tool_calls(response, TOOLS)

    def canonical(self, action: Action) -> list[ToolCall]:
        out = []
        for c in action.tool_calls:
            if c.name == "bash" and set(c.arguments) <= {"command", "description"}:
                out.append(ToolCall("bash", {"command": c.arguments["command"]}))
            else:
                out.append(ToolCall(c.name, dict(c.arguments)))
        if action.submit:
            out.append(ToolCall("submit", {}))
        return out

    def format_observation(self, call: ToolCall, output: str, exit_code: int | None = None) -> dict[str, Any]:
        """The tool's output text, as OpenCode hands a completed tool part to the model (`tool-result` with
        `{type: "text", value: part.state.output}`); its metadata (exit code, title) is for the UI only."""
        return {"role": "tool", "tool_call_id": call.call_id or "call_0", "name": call.name, "content": output}

    def native_call(self, call: ToolCall, rng: Any, call_id: str) -> ToolCall:
        """Canonical `bash{command}` is already OpenCode's call; native calls pass through."""
        if call.name not in TOOL_NAMES:
            raise ValueError(f"OpenCode cannot render tool {call.name!r}")
        return ToolCall(call.name, dict(call.arguments), call_id)

    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        check_record_harness(trajectory, self.name)
        rng = rng_for(seed)
        system = trajectory.system or pick(SYSTEM_PROMPTS, rng).format(workdir=self.workdir)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system},
                                          {"role": "user", "content": trajectory.task}]
        for i, step in enumerate(trajectory.steps):
            work = [c for c in step.calls if c.name != "submit"]
            if work:
                calls = [self.native_call(c, rng, f"call_{i}_{j}") for j, c in enumerate(work)]
                messages.append({"role": "assistant", "content": step.thought,
                                 "tool_calls": openai_tool_calls(calls, f"call_{i}")})
                for j, call in enumerate(calls):
                    obs = step.observations[j] if j < len(step.observations) else None
                    messages.append(self.format_observation(call, obs.output if obs else "", obs.exit_code if obs else 0))
            if len(work) != len(step.calls):
                text = trajectory.response or (step.thought if not work else "") or pick(DONE, rng)
                messages.append({"role": "assistant", "content": text})
                return messages
        if trajectory.response:
            messages.append({"role": "assistant", "content": trajectory.response})
        return messages
