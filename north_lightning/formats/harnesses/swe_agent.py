"""SWE-agent: native function calling with `bash`, `str_replace_editor` and `submit`.

Written from SWE-agent's public tool bundle and templates, as of SWE-agent v1.1.0 (SWE-agent/SWE-agent commit
3ea751c087f32b16e039a2233dd6eefecef325d5, `config/default.yaml`: bundles `tools/registry`,
`tools/edit_anthropic`, `tools/review_on_submit_m`, `parse_function: function_calling`): exactly one tool call
per response, observations come back as tool messages prefixed `OBSERVATION:`, an empty output is replaced by
a sentence saying the command succeeded silently, and over-long output is cut with a note. Not reproduced:
review_on_submit's first `submit` (answered with a review request); here `submit` ends the episode. The XML variant
(`<function=bash>\n<parameter=command>ls</parameter>\n</function>` inside the text, observations as user
messages) serves models without native tool calling; `SweAgentHarness(variant="xml")`, registry name
`swe_agent_xml`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from north_lightning.formats.harnesses.base import Action, FormatError, ToolCall, check_record_harness, response_text
from north_lightning.formats.harnesses.common import (
    function_tool,
    maybe_shuffled,
    openai_tool_calls,
    parse_native_tool_calls,
    pick,
    rng_for,
    validate_call,
)

EDITOR_COMMANDS = ["view", "create", "str_replace", "insert", "undo_edit"]

BASH_TOOL = function_tool(
    "bash",
    "Run a bash command in the terminal. Long-running or interactive commands are not supported; "
    "run them in the background and redirect their output to a file.",
    {"command": {"type": "string", "description": "The bash command to run."}},
    ["command"],
)
EDITOR_TOOL = function_tool(
    "str_replace_editor",
    "A file viewer and editor. `view` shows a file with line numbers (`cat -n`) or a directory two levels "
    "deep; `create` writes a new file (fails if it exists); `str_replace` replaces one exact, unique "
    "occurrence of `old_str` by `new_str`; `insert` adds `new_str` after line `insert_line`; `undo_edit` "
    "reverts the last edit of `path`. Paths are absolute.",
    {
        "command": {"type": "string", "enum": EDITOR_COMMANDS, "description": "The command to run."},
        "path": {"type": "string", "description": "Absolute path to a file or directory."},
        "file_text": {"type": "string", "description": "Content of the file for `create`."},
        "old_str": {"type": "string", "description": "Exact text to replace for `str_replace`."},
        "new_str": {"type": "string", "description": "Replacement for `str_replace`, text for `insert`."},
        "insert_line": {"type": "integer", "description": "Line after which `insert` adds `new_str`."},
        "view_range": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "Optional [start, end] line range for `view` of a file; end -1 means to the end.",
        },
    },
    ["command", "path"],
)
SUBMIT_TOOL = function_tool("submit", "Submit your changes once the task is solved.", {}, [])
TOOLS = [BASH_TOOL, EDITOR_TOOL, SUBMIT_TOOL]
# Arguments each editor command needs beyond `command` and `path`.
EDITOR_REQUIRED = {"create": ["file_text"], "str_replace": ["old_str"], "insert": ["insert_line", "new_str"]}

SYSTEM_PROMPTS = [
    "You are a helpful assistant that can interact with a computer to solve tasks.",
    "You are a capable software engineering assistant with access to a computer through tools.",
    "You are an autonomous programmer. You solve tasks by calling tools that act on a computer.",
    "You help solve programming tasks. You can run commands and edit files through the tools provided.",
]
INSTANCE_TEMPLATES = [
    "<uploaded_files>\n{workdir}\n</uploaded_files>\nI've uploaded a code repository in the directory "
    "{workdir}. Consider the following task description:\n\n<pr_description>\n{task}\n</pr_description>\n\n"
    "Make the minimal changes needed so the requirements in <pr_description> are met. When you are done, "
    "call the submit tool.",
    "A repository is available at {workdir}. Here is the task:\n\n<pr_description>\n{task}\n</pr_description>"
    "\n\nExplore the repository, make the required changes, check them, then submit.",
    "<pr_description>\n{task}\n</pr_description>\n\nThe working directory is {workdir}. Solve the task above "
    "with the tools you have and call submit when finished.",
]
EMPTY_OUTPUT = [
    "Your command ran successfully and did not produce any output.",
    "The command completed successfully without printing any output.",
    "The command ran successfully; it produced no output.",
]
MAX_OBSERVATION_CHARS = 100_000
MULTIPLE_CALLS = "Your last output included multiple tool calls. Please make exactly one tool call per response."
NO_CALL = "Your last output did not use any tool calls. Please make exactly one tool call per response."

_XML_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.DOTALL)
_XML_PARAM = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)


class SweAgentHarness:
    """SWE-agent's format; `variant` is "function_calling" (native tool calls) or "xml"."""

    def __init__(self, variant: str = "function_calling", workdir: str = "/testbed"):
        if variant not in ("function_calling", "xml"):
            raise ValueError(f"unknown SWE-agent variant {variant!r} (function_calling or xml)")
        self.variant = variant
        self.name = "swe_agent" if variant == "function_calling" else "swe_agent_xml"
        self.workdir = workdir

    # -- schemas ---------------------------------------------------------------------------------------
    def tools(self) -> list[dict[str, Any]] | None:
        return self.tools_for(None)

    def tools_for(self, seed: int | None) -> list[dict[str, Any]] | None:
        """Tool schemas in a seeded order (None for the XML variant: the tools are described in text)."""
        if self.variant == "xml":
            return None
        return maybe_shuffled(TOOLS, rng_for(seed))

    # -- parsing ---------------------------------------------------------------------------------------
    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        if isinstance(response, dict) and response.get("tool_calls"):
            if len(response["tool_calls"]) > 1:
                return FormatError("multiple_actions", MULTIPLE_CALLS)
            result = parse_native_tool_calls(response, TOOLS)
        else:
            text = response_text(response)
            result = self._parse_xml(text)
        if isinstance(result, FormatError):
            return result
        call = result.tool_calls[0]
        error = _check_editor(call)
        if error is not None:
            return error
        return Action(result.tool_calls, result.thought, submit=call.name == "submit")

    def _parse_xml(self, text: str) -> Action | FormatError:
        found = _XML_FUNCTION.findall(text)
        if not found:
            return FormatError("no_action", NO_CALL)
        if len(found) > 1:
            return FormatError("multiple_actions", MULTIPLE_CALLS)
        name, body = found[0]
        schema = {t["function"]["name"]: t["function"]["parameters"]["properties"] for t in TOOLS}
        args: dict[str, Any] = {}
        for key, raw in _XML_PARAM.findall(body):
            value: Any = raw.strip("\n")
            kind = schema.get(name, {}).get(key, {}).get("type")
            try:
                if kind == "integer":
                    value = int(value.strip())
                elif kind == "array":
                    value = json.loads(value)
            except (ValueError, json.JSONDecodeError):
                return FormatError("bad_argument_type", f"Argument {key!r} of {name!r} must be {kind}.")
            args[key] = value
        call = ToolCall(name, args)
        error = validate_call(call, TOOLS)
        if error is not None:
            return error
        thought = text[: text.find("<function=")].strip()
        return Action((call,), thought)

    # -- rendering -------------------------------------------------------------------------------------
    def format_observation(self, call: ToolCall, output: str, exit_code: int | None = None) -> dict[str, Any]:
        return self._observation(call, output, None)

    def _observation(self, call: ToolCall, output: str, rng: Any) -> dict[str, Any]:
        if not output.strip():
            body = pick(EMPTY_OUTPUT, rng)
        elif len(output) > MAX_OBSERVATION_CHARS:
            elided = len(output) - MAX_OBSERVATION_CHARS
            body = (
                output[:MAX_OBSERVATION_CHARS] + "<response clipped><NOTE>Observations are limited to "
                f"{MAX_OBSERVATION_CHARS} characters; {elided} characters were elided. Use a command that "
                "prints less (head, tail, grep or a redirect to a file); do not use interactive pagers.</NOTE>"
            )
        else:
            body = output
        content = "OBSERVATION:\n" + body
        if self.variant == "xml":
            return {"role": "user", "content": content}
        return {"role": "tool", "tool_call_id": call.call_id or "call_0", "name": call.name, "content": content}

    def _system_prompt(self, rng: Any) -> str:
        base = pick(SYSTEM_PROMPTS, rng)
        if self.variant == "function_calling":
            return base
        lines = [base, "", "You have access to the following functions:", ""]
        for tool in maybe_shuffled(TOOLS, rng):
            fn = tool["function"]
            lines.append(f"---- BEGIN FUNCTION: {fn['name']} ----\nDescription: {fn['description']}")
            for pname, spec in fn["parameters"]["properties"].items():
                req = "required" if pname in fn["parameters"]["required"] else "optional"
                lines.append(f"  ({req}) {pname} [{spec['type']}]: {spec['description']}")
            lines.append(f"---- END FUNCTION: {fn['name']} ----\n")
        lines.append(
            "To call a function, reply in this exact format, with exactly one function call per reply:\n"
            "<function=example_function_name>\n<parameter=example_parameter>value</parameter>\n</function>"
        )
        return "\n".join(lines)

    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        check_record_harness(trajectory, "swe_agent", "swe_agent_xml")
        rng = rng_for(seed)
        system = trajectory.system or self._system_prompt(rng)
        user = pick(INSTANCE_TEMPLATES, rng).format(workdir=self.workdir, task=trajectory.task)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        for i, step in enumerate(trajectory.steps):
            if len(step.calls) != 1:
                raise ValueError(f"record {trajectory.id} step {i}: SWE-agent needs exactly one call per step")
            call = step.calls[0]
            call = ToolCall(call.name, dict(call.arguments), f"call_{i}")
            messages.append(self.assistant_message(step.thought, call))
            if step.observations:
                messages.append(self._observation(call, step.observations[0].output, rng))
            if call.name == "submit":
                break
        return messages

    def assistant_message(self, thought: str, call: ToolCall) -> dict[str, Any]:
        """How the model states one call: native `tool_calls`, or the XML block after its thought."""
        if self.variant == "function_calling":
            return {"role": "assistant", "content": thought, "tool_calls": openai_tool_calls([call], "call")}
        params = "".join(f"<parameter={k}>{_xml_value(v)}</parameter>\n" for k, v in call.arguments.items())
        block = f"<function={call.name}>\n{params}</function>"
        return {"role": "assistant", "content": f"{thought}\n\n{block}" if thought else block}

    def canonical(self, action: Action) -> list[ToolCall]:
        """Native calls → canonical vocabulary (bash and submit are already canonical)."""
        return [ToolCall(c.name, dict(c.arguments)) for c in action.tool_calls]


def _xml_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _check_editor(call: ToolCall) -> FormatError | None:
    if call.name != "str_replace_editor":
        return None
    for key in EDITOR_REQUIRED.get(call.arguments.get("command", ""), []):
        if key not in call.arguments:
            return FormatError(
                "missing_argument", f"Parameter `{key}` is required for command: {call.arguments['command']}."
            )
    return None
