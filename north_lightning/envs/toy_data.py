"""Bundled demo SFT data: canonical trajectories built from the toy terminal tasks' oracles.

The tasks (and their train / held-out split) come from `north_lightning.envs.toy_tasks`; only `train` tasks
become SFT data, so the held-out parameters stay unseen for RL evaluation. Each oracle (a list of shell
commands) becomes a trajectory: look at the starting state, run the oracle, check the result, submit, with
the observations a real shell would print (computed from the task's parameters). `python_fix` tasks also
get harness-native variants (SWE-agent `str_replace_editor`, OpenCode `read`/`edit`) so those tools appear
in the data. A small single-turn set (arithmetic with a worked answer, tiny Python functions, word
transforms) stands in for the reasoning / competitive-programming / instruction-following sources, and a
few deliberately defective records (`toy_terminal_noisy.jsonl`) exercise the filters in the demo.

Regenerate the bundled files with `python -m north_lightning.envs.toy_data --out
north_lightning/assets/sft_data`.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
from pathlib import Path

from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.records import Observation, Step, Trajectory, write_jsonl
from north_lightning.envs.toy_tasks import ToyTask, generate_toy_tasks, split_of

LOOK = ["Let me look at the starting state first.", "First, check what is in /app.", "Inspect the working directory."]
ACT = ["Now do the actual work.", "Run the command that solves the task.", "Apply the change."]
CHECK = ["Verify the result.", "Check that the output is right.", "Make sure it worked."]
DONE = ["The result is correct, so I can submit.", "Everything matches the task; submitting.", "Done; submit."]


def _bash(command: str) -> tuple[ToolCall, ...]:
    return (ToolCall("bash", {"command": command}),)


def _ls(task: ToyTask) -> str:
    return "".join(f"{name}\n" for name in sorted(task.files))


def _expected_check(task: ToyTask) -> tuple[str, str]:
    """The command that checks the task's result and what it prints once the oracle ran."""
    p = task.params
    if task.family == "write_file":
        return f"cat /app/{p['name']}", f"{p['content']}\n"
    if task.family == "arith":
        value = {"+": p["a"] + p["b"], "-": p["a"] - p["b"], "*": p["a"] * p["b"]}[p["op"]]
        return "cat /app/answer.txt", f"{value}\n"
    if task.family == "text_transform":
        lines = list(p["lines"])
        out = {"upper": [s.upper() for s in lines], "sort": sorted(lines), "reverse": lines[::-1], "first": lines[:1]}[p["op"]]
        return "cat /app/output.txt", "".join(f"{s}\n" for s in out)
    module = p["module"]
    return f"cd /app && python3 -m pytest -q test_{module}.py", f"{'.':<72} [100%]\n1 passed in 0.01s\n"


def _module_source(task: ToyTask) -> tuple[str, str]:
    module = task.params["module"]
    return f"/app/{module}.py", task.files[f"{module}.py"]


def agnostic_trajectory(task: ToyTask, rng: random.Random) -> Trajectory:
    """look → oracle command(s) → check → submit, in the canonical bash vocabulary."""
    steps = []
    if task.family == "python_fix":
        path, source = _module_source(task)
        steps.append(Step(rng.choice(LOOK), _bash(f"cat {path}"), (Observation(source, 0),)))
    elif task.files:
        steps.append(Step(rng.choice(LOOK), _bash("cat /app/input.txt"), (Observation(task.files["input.txt"], 0),)))
    elif rng.random() < 0.5:
        steps.append(Step(rng.choice(LOOK), _bash("ls /app"), (Observation(_ls(task), 0),)))
    for command in task.oracle:
        steps.append(Step(rng.choice(ACT), _bash(command), (Observation("", 0),)))
    check, printed = _expected_check(task)
    steps.append(Step(rng.choice(CHECK), _bash(check), (Observation(printed, 0),)))
    steps.append(Step(rng.choice(DONE), (ToolCall("submit", {}),)))
    return Trajectory(id=task.task_id, task=task.instruction, source="toy_terminal", steps=tuple(steps),
                      domain="agentic", verified=True, meta={"family": task.family, "params": task.params})


def native_fix_trajectory(task: ToyTask, harness: str, rng: random.Random) -> Trajectory:
    """A python_fix task solved with the harness's own file tools instead of sed."""
    path, source = _module_source(task)
    buggy, fixed = _fix_lines(task)
    check, printed = _expected_check(task)
    if harness == "swe_agent":
        numbered = "".join(f"{i + 1:6}\t{line}\n" for i, line in enumerate(source.splitlines()))
        view = ToolCall("str_replace_editor", {"command": "view", "path": path})
        edit = ToolCall("str_replace_editor", {"command": "str_replace", "path": path, "old_str": buggy, "new_str": fixed})
        view_out = f"Here's the result of running `cat -n` on {path}:\n{numbered}"
        edit_out = f"The file {path} has been edited. Review the changes and make sure they are as expected."
    else:
        view = ToolCall("read", {"filePath": path})
        edit = ToolCall("edit", {"filePath": path, "oldString": buggy, "newString": fixed})
        view_out = "".join(f"{i + 1:05}| {line}\n" for i, line in enumerate(source.splitlines()))
        edit_out = ""
    steps = (
        Step(rng.choice(LOOK), (view,), (Observation(view_out),)),
        Step(f"The body is wrong: `{buggy.strip()}` should be `{fixed.strip()}`.", (edit,), (Observation(edit_out),)),
        Step(rng.choice(CHECK), _bash(check), (Observation(printed, 0),)),
        Step(rng.choice(DONE), (ToolCall("submit", {}),)),
    )
    return Trajectory(id=f"{task.task_id}-{harness}", task=task.instruction, source="toy_swe", steps=steps,
                      domain="agentic", harness=harness, verified=True,
                      meta={"family": task.family, "params": task.params},
                      response="Fixed the function; its tests pass." if harness == "opencode" else None)


def _fix_lines(task: ToyTask) -> tuple[str, str]:
    """(buggy line, fixed line) of a python_fix task, read off its oracle's sed expression."""
    source = task.files[f"{task.params['module']}.py"]
    buggy = source.splitlines()[1]
    expr = shlex.split(task.oracle[0])[2]  # s/<old>/<new>/
    new = expr[2:-1].split("/", 1)[1].replace("\\", "")
    return buggy, buggy[: len(buggy) - len(buggy.lstrip())] + new


def single_turn_records(n: int, seed: int) -> list[Trajectory]:
    """Short answers (reasoning, code, instruction following); arithmetic avoids held-out task parameters."""
    rng = random.Random(f"toy-chat:{seed}")
    words = ["apple", "river", "stone", "cloud", "green", "tiger", "lemon", "piano", "rocket", "maple"]
    out: list[Trajectory] = []
    while len(out) < n:
        kind = len(out) % 3
        if kind == 0:
            a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice("+-*")
            if split_of("arith", {"a": a, "op": op, "b": b}) != "train":
                continue
            value = {"+": a + b, "-": a - b, "*": a * b}[op]
            task, domain = f"What is {a} {op} {b}?", "reasoning"
            answer = f"{a} {op} {b} = {value}. The answer is {value}."
        elif kind == 1:
            name, expr = rng.choice([("add", "a + b"), ("multiply", "a * b"), ("maximum", "max(a, b)"),
                                     ("minimum", "min(a, b)"), ("difference", "a - b")])
            task, domain = f"Write a Python function {name}(a, b) that returns {expr}.", "code"
            answer = f"```python\ndef {name}(a, b):\n    return {expr}\n```"
        else:
            picked = rng.sample(words, rng.randint(3, 5))
            how, result = rng.choice([("in reverse order", picked[::-1]), ("sorted alphabetically", sorted(picked)),
                                      ("in uppercase", [w.upper() for w in picked])])
            task, domain = f"List these words {how}: {', '.join(picked)}", "instruction"
            answer = ", ".join(result)
        out.append(Trajectory(id=f"toy-chat-{len(out)}", task=task, source=f"toy_{domain}", response=answer,
                              domain=domain, harness="chat", verified=True))
    return out


def noisy_records(tasks: list[ToyTask], rng: random.Random) -> list[Trajectory | str]:
    """Defective copies of good trajectories, one defect each, the kinds real SFT dumps contain; plus raw
    lines that are not records at all. They make the filters and the bad-record counters visible in the
    demo's data report."""
    out: list[Trajectory | str] = []
    for i, task in enumerate(tasks):
        good = agnostic_trajectory(task, rng)
        steps = list(good.steps)
        kind = i % 5
        work = len(steps) - 3  # the oracle command's step
        s = steps[work]
        if kind == 0:  # a tool call without its required argument
            steps[work] = Step(s.thought, (ToolCall("bash", {"cmd": s.calls[0].arguments["command"]}),), s.observations)
        elif kind == 1:  # chat-template control tokens leaked into an observation
            steps[work] = Step(s.thought, s.calls, (Observation("<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>", 0),))
        elif kind == 2:  # the thought cites a file nothing ever showed
            steps[work] = Step("As /etc/toy/expected.txt says, this is the fix.", s.calls, s.observations)
        elif kind == 3:  # trailing whitespace runs in the assistant text
            steps[work] = Step(s.thought + "    \n    ", s.calls, s.observations)
        else:  # a tool the canonical vocabulary does not have
            steps[work] = Step(s.thought, (ToolCall("python", {"code": "print(1)"}),), s.observations)
        out.append(Trajectory(id=f"{good.id}-noisy{kind}", task=good.task, source="toy_terminal", steps=tuple(steps),
                              domain="agentic", verified=False, meta={"defect": kind}))
    out += ['{"id": "truncated-line", "task": "Create /app/x.txt", "steps": [{"thought": "ok"',
            '{"id": "no-task", "source": "toy_terminal", "response": "done"}',
            '{"id": "unknown-harness", "task": "t", "source": "toy_terminal", "response": "r", "harness": "aider"}']
    return out


def build(out_dir: str | Path, n_tasks: int = 400, n_chat: int = 900, seed: int = 0,
          n_transform: int = 300) -> dict[str, int]:
    """Write the bundled demo shards; returns records per file."""
    out = Path(out_dir)
    tasks = generate_toy_tasks(n_tasks, seed=seed, split="train")
    rng = random.Random(f"toy-sft:{seed}")
    agnostic = [agnostic_trajectory(t, rng) for t in tasks]
    fixes = [native_fix_trajectory(t, h, rng) for t in tasks if t.family == "python_fix" for h in ("swe_agent", "opencode")]
    chat = single_turn_records(n_chat, seed)
    noisy = noisy_records(tasks[:20], random.Random(f"toy-noisy:{seed}"))
    # More `text_transform` trajectories (the RL demo's family) from other train tasks, in their own shard so a
    # mixture can weight them: choosing the transform means reading an instruction ~140 tokens back, which the
    # 8.6M model learns only from many examples (configs/tiny/mixtures/sft_stage2.yaml).
    transform_tasks = generate_toy_tasks(n_transform, seed=seed + 1, split="train", families=("text_transform",))
    transform_rng = random.Random(f"toy-sft-transform:{seed}")
    transforms = [agnostic_trajectory(t, transform_rng) for t in transform_tasks]
    files = {"toy_terminal_train.jsonl": agnostic, "toy_swe_native_train.jsonl": fixes, "toy_chat_train.jsonl": chat,
             "toy_text_transform_train.jsonl": transforms}
    for name, records in files.items():
        write_jsonl(out / name, records)
    with (out / "toy_terminal_noisy.jsonl").open("w") as f:
        for r in noisy:
            f.write((r if isinstance(r, str) else json.dumps(r.to_dict(), ensure_ascii=False)) + "\n")
    return {name: len(records) for name, records in {**files, "toy_terminal_noisy.jsonl": noisy}.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "sft_data"))
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--chat", type=int, default=900)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build(args.out, args.tasks, args.chat, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
