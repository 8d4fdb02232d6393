"""Trajectory files in exactly the shapes their upstream producers write (see each importer's docstring for
the producer code and version), written into a test directory. Each sample comes with the actions its agent
took, in our canonical vocabulary, so a round trip can be checked against the source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PR = "add() in calc.py subtracts instead of adding."


def _tc(cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


# -- SWE-agent 1.1 .traj with function calling -------------------------------------------------------------
EDIT = {"command": "str_replace", "path": "/testbed/calc.py", "old_str": "a - b", "new_str": "a + b"}
SWE_FC_ACTIONS = [
    [("bash", {"command": "grep -n 'def add' -r /testbed"})],
    [("str_replace_editor", {"command": "view", "path": "/testbed/calc.py"})],
    [("str_replace_editor", EDIT)],
    [("bash", {"command": "cd /testbed && python -c 'import calc; print(calc.add(2, 3))'"})],
    [("submit", {})],
]


def swe_agent_fc_traj() -> dict[str, Any]:
    calls = [("call_1", "bash", {"command": "grep -n 'def add' -r /testbed"}, "/testbed/calc.py:1:def add(a, b):\n"),
             ("call_2", "str_replace_editor", {"command": "view", "path": "/testbed/calc.py"},
              "Here's the result of running `cat -n` on /testbed/calc.py:\n     1\tdef add(a, b):\n     2\t    return a - b\n"),
             ("call_3", "str_replace_editor", EDIT, "The file /testbed/calc.py has been edited."),
             ("call_4", "bash", {"command": "cd /testbed && python -c 'import calc; print(calc.add(2, 3))'"}, "5\n"),
             # review_on_submit: the first submit is answered with a review prompt, the second one ends
             ("call_5", "submit", {}, "Thank you for your work on this issue. Please carefully follow the steps "
                                      "below to help review your changes.\n..."),
             ("call_6", "submit", {}, "diff --git a/calc.py b/calc.py\n")]
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant that can interact with a computer to solve tasks.",
         "agent": "main", "message_type": "system_prompt"},
        {"role": "user", "content": [{"type": "text", "text": f"<uploaded_files>\n/testbed\n</uploaded_files>\nI've "
                                      f"uploaded a python code repository in the directory /testbed. Consider the "
                                      f"following PR description:\n\n<pr_description>\n{PR}\n</pr_description>\n\n"
                                      "Can you help me implement the necessary changes?"}],
         "agent": "main", "message_type": "observation"},
    ]
    trajectory = []
    for cid, name, args, obs in calls:
        thought = f"I will call {name}."
        history.append({"role": "assistant", "content": thought, "thought": thought, "action": f"{name} ...",
                        "agent": "main", "tool_calls": [_tc(cid, name, args)], "message_type": "action",
                        "thinking_blocks": []})
        history.append({"role": "tool", "content": [{"type": "text", "text": f"OBSERVATION:\n{obs}"}],
                        "agent": "main", "message_type": "observation", "tool_call_ids": [cid]})
        trajectory.append({"action": f"{name} ...", "observation": obs, "response": thought, "thought": thought,
                           "execution_time": 0.1, "state": {"working_dir": "/testbed"}, "query": [{}],
                           "extra_info": {}})
    replay = {"problem_statement": {"text": PR, "extra_fields": {}, "type": "text", "id": "calc__add-1"},
              "agent": {"type": "default"}}
    return {"trajectory": trajectory, "history": history,
            "info": {"exit_status": "submitted", "submission": "diff --git a/calc.py b/calc.py\n",
                     "model_stats": {"instance_cost": 0.1, "api_calls": 6}, "swe_agent_version": "1.1.0"},
            "replay_config": json.dumps(replay), "environment": "main"}


# -- SWE-agent 0.x .traj (thought / action) ------------------------------------------------------------------
SWE_TA_ACTIONS = [[("bash", {"command": "ls /testbed"})],
                  [("bash", {"command": "sed -i 's/a - b/a + b/' /testbed/calc.py"})],
                  [("submit", {})]]


def swe_agent_thought_action_traj(exit_status: str = "submitted") -> dict[str, Any]:
    steps = [("Let me look at the repository.", "ls /testbed", "calc.py\nsetup.py\n"),
             ("Fix the operator.", "sed -i 's/a - b/a + b/' /testbed/calc.py", ""),
             ("Done.", "submit", "diff --git a/calc.py b/calc.py\n")]
    history = [{"role": "system", "content": "SETTING: You are an autonomous programmer ...", "agent": "primary"},
               {"role": "user", "content": f"We're currently solving the following issue within our repository. "
                                           f"Here's the issue text:\nISSUE:\n{PR}\n\nINSTRUCTIONS:\nNow, you're "
                                           "going to solve this issue on your own.", "agent": "primary"}]
    trajectory = []
    for thought, action, obs in steps:
        response = f"DISCUSSION\n{thought}\n\n```\n{action}\n```"
        history.append({"role": "assistant", "content": response, "thought": thought, "action": action,
                        "agent": "primary"})
        history.append({"role": "user", "content": f"{obs}\n(Open file: n/a)\n(Current directory: /testbed)\nbash-$",
                        "agent": "primary"})
        trajectory.append({"action": action, "observation": obs, "response": response, "thought": thought,
                           "state": "{\"open_file\": \"n/a\", \"working_dir\": \"/testbed\"}"})
    return {"environment": "swe_main", "trajectory": trajectory, "history": history,
            "info": {"exit_status": exit_status, "submission": "diff --git a/calc.py b/calc.py\n",
                     "model_stats": {"total_cost": 0.2, "instance_cost": 0.2, "api_calls": 3}}}


# -- nebius/SWE-agent-trajectories rows ------------------------------------------------------------------------
SWE_ROW_ACTIONS = [[("bash", {"command": "ls"})],
                   [("bash", {"command": "python reproduce.py"})],
                   [("submit", {})]]


def swe_agent_row(target: bool = True, first_action: str = "ls", exit_status: str = "submitted",
                  instance: str = "calc__add-1") -> dict[str, Any]:
    def turn(role: str, text: str) -> dict[str, Any]:
        return {"cutoff_date": "01.01.2024", "mask": role != "ai", "role": role, "system_prompt": "", "text": text}

    return {
        "instance_id": instance, "model_name": "swe-agent-llama-70b", "target": target,
        "trajectory": [
            turn("system", "SETTING: You are an autonomous programmer, and you're working directly in the command line"),
            turn("user", f"We're currently solving the following issue within our repository. Here's the issue "
                         f"text:\nISSUE:\n{PR}\n\nINSTRUCTIONS:\nNow, you're going to solve this issue on your own."),
            turn("ai", f"First, list the files.\n```\n{first_action}\n```"),
            turn("user", "calc.py\nreproduce.py\n(Open file: n/a)\n(Current directory: /calc)\nbash-$"),
            turn("ai", "Run the reproduction script. It shows the bug, e.g. with\n```python\nadd(2, 3)\n```\nso:\n"
                       "```\npython reproduce.py\n```"),
            turn("user", "Your command ran successfully and did not produce any output.\n(Open file: n/a)\n"
                         "(Current directory: /calc)\nbash-$"),
            turn("ai", "DISCUSSION\nThe fix is in; submit.\n```\nsubmit\n```"),
        ],
        "exit_status": exit_status,
        "generated_patch": "diff --git a/calc.py b/calc.py\n",
        "eval_logs": "",
    }


# -- mini-swe-agent --------------------------------------------------------------------------------------------
MINI_V1_ACTIONS = [[("bash", {"command": "grep -n 'def add' calc.py"})],
                   [("bash", {"command": "sed -i 's/a - b/a + b/' calc.py && python -c 'import calc; print(calc.add(2, 3))'"})],
                   [("bash", {"command": "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached"})]]


def mini_v1_traj(exit_status: str = "Submitted") -> dict[str, Any]:
    diff = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n"
    msgs = [
        {"role": "system", "content": "You are a helpful assistant that can interact multiple times with a computer shell to solve programming tasks."},
        {"role": "user", "content": f"<pr_description>\nConsider the following PR description:\n{PR}\n</pr_description>\n\n<instructions>\n# Task Instructions\n...</instructions>"},
        {"role": "assistant", "content": "THOUGHT: find the function.\n\n```bash\ngrep -n 'def add' calc.py\n```"},
        {"role": "user", "content": "<returncode>0</returncode>\n<output>\n1:def add(a, b):\n</output>"},
        # a reply with two actions: upstream answers with a format error and runs nothing
        {"role": "assistant", "content": "THOUGHT: two things.\n\n```bash\nls\n```\n\n```bash\npwd\n```"},
        {"role": "user", "content": "Please always provide EXACTLY ONE action in triple backticks, found 2 actions.\n"
                                    "If you want to end the task, please issue the following command: "
                                    "`echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`\nwithout any other command."},
        {"role": "assistant", "content": "THOUGHT: fix and check.\n\n```bash\nsed -i 's/a - b/a + b/' calc.py && python -c 'import calc; print(calc.add(2, 3))'\n```"},
        {"role": "user", "content": "<returncode>0</returncode>\n<output>\n5\n</output>"},
        {"role": "assistant", "content": "THOUGHT: submit.\n\n```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached\n```"},
        {"role": "user", "content": diff},
    ]
    for m in msgs:
        m["timestamp"] = 1700000000.0
    return {"info": {"exit_status": exit_status, "submission": diff,
                     "model_stats": {"instance_cost": 0.01, "api_calls": 4}, "mini_version": "1.17.5",
                     "config": {"agent": {"step_limit": 250}, "agent_type": "minisweagent.run.extra.swebench.ProgressTrackingAgent"}},
            "messages": msgs, "trajectory_format": "mini-swe-agent-1", "instance_id": "calc__add-1"}


MINI_V2_ACTIONS = [[("bash", {"command": "cat calc.py"})],
                   [("bash", {"command": "echo 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT'\necho 'Task completed successfully'"})]]


def mini_v2_traj() -> dict[str, Any]:
    long = "x = 1\n" * 2500  # 15,000 characters: the message shows head and tail, extra keeps all of it
    return {
        "info": {"model_stats": {"instance_cost": 0.0, "api_calls": 2},
                 "config": {"agent": {}, "agent_type": "minisweagent.agents.default.DefaultAgent"},
                 "mini_version": "2.4.6", "exit_status": "Submitted", "submission": "Task completed successfully\n"},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that can interact with a computer."},
            {"role": "user", "content": f"Please solve this issue: {PR}\n\nYou can execute bash commands and edit files to implement the necessary changes."},
            {"role": "assistant", "content": "THOUGHT: read it.\n\n```mswea_bash_command\ncat calc.py\n```",
             "extra": {"actions": [{"command": "cat calc.py"}], "cost": 0.0}},
            {"role": "user", "content": "<returncode>0</returncode>\n<warning>\nThe output of your last command was too long.\n</warning>"
                                        f"<output_head>\n{long[:5000]}\n</output_head>\n<elided_chars>\n5000 characters elided\n</elided_chars>\n"
                                        f"<output_tail>\n{long[-5000:]}\n</output_tail>",
             "extra": {"raw_output": long, "returncode": 0, "timestamp": 1.0, "exception_info": ""}},
            {"role": "assistant", "content": "THOUGHT: done.\n\n```mswea_bash_command\necho 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT'\necho 'Task completed successfully'\n```",
             "extra": {"actions": [{"command": "echo 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT'\necho 'Task completed successfully'"}]}},
            {"role": "exit", "content": "Task completed successfully\n",
             "extra": {"exit_status": "Submitted", "submission": "Task completed successfully\n"}},
        ],
        "trajectory_format": "mini-swe-agent-1.1",
    }


# -- OpenHands (SWE-Gym rows) ----------------------------------------------------------------------------------
OPENHANDS_ACTIONS = [[("bash", {"command": "cd /workspace/calc && grep -n 'a - b' calc.py"})],
                     [("str_replace_editor", EDIT | {"path": "/workspace/calc/calc.py"})],
                     [("submit", {})]]


def openhands_row(resolved: bool = True, extra_tool: str | None = None) -> dict[str, Any]:
    edit = EDIT | {"path": "/workspace/calc/calc.py"}
    bash = {"command": "cd /workspace/calc && grep -n 'a - b' calc.py", "is_input": "false"}
    first = [_tc("toolu_01", "think", {"thought": "The bug is probably the operator."}),
             _tc("toolu_02", extra_tool or "execute_bash", bash if extra_tool is None else {"url": "http://x"})]
    return {
        "instance_id": "calc__add-1", "resolved": resolved,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are OpenHands agent, a helpful AI assistant that can interact with a computer to solve tasks."}]},
            {"role": "user", "content": [{"type": "text", "text": f"<uploaded_files>\n/workspace/calc\n</uploaded_files>\nI've uploaded a python code repository in the directory calc. Consider the following issue description:\n\n<issue_description>\n{PR}\n</issue_description>\n\nCan you help me implement the necessary changes?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me find the code."}], "tool_calls": first},
            {"role": "tool", "tool_call_id": "toolu_01", "name": "think", "content": [{"type": "text", "text": "Your thought has been logged."}]},
            {"role": "tool", "tool_call_id": "toolu_02", "name": "execute_bash", "content": [{"type": "text", "text": "2:    return a - b\n[Python Interpreter: /usr/bin/python]\nroot@runtime:/workspace/calc # \n[Command finished with exit code 0]"}]},
            {"role": "assistant", "content": "", "tool_calls": [_tc("toolu_03", "str_replace_editor", edit)]},
            {"role": "tool", "tool_call_id": "toolu_03", "name": "str_replace_editor", "content": "The file /workspace/calc/calc.py has been edited."},
            {"role": "assistant", "content": "The fix is done.", "tool_calls": [_tc("toolu_04", "finish", {})]},
        ],
    }


# -- Harbor trial directories (Terminus-2, ATIF) -------------------------------------------------------------
HARBOR_ACTIONS = [[("bash", {"command": "echo $((17 + 25)) > /app/answer.txt"}), ("bash", {"command": "cat /app/answer.txt"})],
                  [("keystrokes", {"keystrokes": "C-c", "duration": 0.1}), ("submit", {})]]


def write_harbor_trial(root: Path, name: str, *, reward: float | None = 1.0, exception: str | None = None,
                       raw: bool = False, parser: str = "json") -> Path:
    trial = root / name
    (trial / "agent").mkdir(parents=True)
    (trial / "verifier").mkdir()
    prompt = ("You are an AI assistant tasked with solving command-line tasks in a Linux environment.\n\n...\n\n"
              "Task Description:\nWrite the sum of 17 and 25 to /app/answer.txt\n\nCurrent terminal state:\nroot@4f2a:/app# ")
    screen1 = "root@4f2a:/app# echo $((17 + 25)) > /app/answer.txt\nroot@4f2a:/app# cat /app/answer.txt\n42\nroot@4f2a:/app# "
    replies = [  # (analysis, commands, task_complete, observation)
        ("Fresh shell.", [("echo $((17 + 25)) > /app/answer.txt\n", 0.1), ("cat /app/answer.txt\n", 0.1)], False, screen1),
        ("Done; stop the pager just in case.", [("C-c", 0.1)], True,
         "Current terminal state:\nroot@4f2a:/app# ^C\n\nAre you sure you want to mark the task as complete? ..."),
        ("Confirmed.", [], True, ""),
    ]
    steps: list[dict[str, Any]] = [{"step_id": 1, "timestamp": "2025-01-01T00:00:00Z", "source": "user", "message": prompt}]
    for k, (analysis, commands, complete, obs) in enumerate(replies):
        step: dict[str, Any] = {"step_id": k + 2, "timestamp": "2025-01-01T00:00:01Z", "source": "agent",
                                "model_name": "hosted_vllm/north", "metrics": {"prompt_tokens": 10, "completion_tokens": 5}}
        if raw:
            if parser == "xml":
                keys = "".join(f'<keystrokes duration="{d}">{c}</keystrokes>\n' for c, d in commands)
                step["message"] = (f"<response>\n<analysis>{analysis}</analysis>\n<plan>go</plan>\n<commands>\n{keys}"
                                   f"</commands>\n<task_complete>{str(complete).lower()}</task_complete>\n</response>")
            else:
                step["message"] = json.dumps({"analysis": analysis, "plan": "go", "task_complete": complete,
                                              "commands": [{"keystrokes": c, "duration": d} for c, d in commands]})
        else:
            step["message"] = f"Analysis: {analysis}\nPlan: go"
            calls = [{"tool_call_id": f"call_{k}_{i + 1}", "function_name": "bash_command",
                      "arguments": {"keystrokes": c, "duration": d}} for i, (c, d) in enumerate(commands)]
            if complete:
                calls.append({"tool_call_id": f"call_{k}_task_complete", "function_name": "mark_task_complete", "arguments": {}})
            step["tool_calls"] = calls
        if obs:
            step["observation"] = {"results": [{"content": obs}]}
        steps.append(step)
    atif = {"schema_version": "ATIF-v1.5", "session_id": "s-1",
            "agent": {"name": "terminus-2", "version": "2.0.0", "model_name": "hosted_vllm/north"},
            "steps": steps, "final_metrics": {"total_prompt_tokens": 30, "total_completion_tokens": 15}}
    (trial / "agent" / "trajectory.json").write_text(json.dumps(atif, indent=2))
    result = {"id": "0f", "task_name": "sum-task", "trial_name": name, "trial_uri": f"file://{trial}",
              "config": {"agent": {"name": "terminus-2", "model_name": "hosted_vllm/north",
                                   "kwargs": {"parser_name": parser}}},
              "agent_info": {"name": "terminus-2", "version": "2.0.0"},
              "verifier_result": None if reward is None else {"rewards": {"reward": reward}},
              "exception_info": None if exception is None else {"exception_type": exception,
                                                                 "exception_message": "timed out"}}
    (trial / "result.json").write_text(json.dumps(result, indent=2))
    return trial


# -- OpenAI chat messages ---------------------------------------------------------------------------------------
MESSAGES_BASH_ACTIONS = [[("bash", {"command": "ls"})], [("bash", {"command": "cat a.txt"})], [("submit", {})]]
MESSAGES_OPENCODE_ACTIONS = [[("read", {"filePath": "/app/README.md"}), ("grep", {"pattern": "teh"})],
                             [("edit", {"filePath": "/app/README.md", "oldString": "teh", "newString": "the"})],
                             [("submit", {})]]


def messages_bash_row(reward: float = 1.0) -> dict[str, Any]:
    return {"id": "chat-bash-1", "reward": reward, "messages": [
        {"role": "system", "content": "You can run shell commands."},
        {"role": "user", "content": "Show a.txt"},
        {"role": "assistant", "content": "Look first.", "tool_calls": [_tc("c1", "bash", {"command": "ls"}),
                                                                       _tc("c2", "bash", {"command": "cat a.txt"})]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt\n"},
        {"role": "tool", "tool_call_id": "c2", "content": "hello\n"},
        {"role": "assistant", "content": None, "tool_calls": [_tc("c3", "submit", {})]},
    ]}


def messages_opencode_row() -> dict[str, Any]:
    return {"messages": [
        {"role": "user", "content": "Fix the typo in /app/README.md"},
        {"role": "assistant", "content": "", "tool_calls": [_tc("a", "read", {"filePath": "/app/README.md"}),
                                                            _tc("b", "grep", {"pattern": "teh"})]},
        {"role": "tool", "tool_call_id": "a", "content": "1\tteh project\n"},
        {"role": "tool", "tool_call_id": "b", "content": "/app/README.md:1"},
        {"role": "assistant", "content": "", "tool_calls": [_tc("c", "edit", {"filePath": "/app/README.md",
                                                                              "oldString": "teh", "newString": "the"})]},
        {"role": "tool", "tool_call_id": "c", "content": ""},
        {"role": "assistant", "content": "Fixed the typo."},
    ]}


def write_jsonl(path: Path, rows: list[Any], extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines))
    return path
