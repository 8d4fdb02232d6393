"""Seeded toy terminal tasks a tiny model can learn, each verifiable by a unit test.

Four families: `write_file` (create a file with given content), `arith` (write an arithmetic result),
`text_transform` (uppercase / sort / reverse / first line of a given file) and `python_fix` (a one-line bug in a
small module that has a test). Every task has parameters, a deterministic id, an oracle (a list of shell
commands that solves it; the SFT-data helper turns it into canonical trajectories) and materialises as a
Harbor-format task directory. The train / held-out split is a function of the parameters alone (a hash), so
the two never share a task whatever seed or count generated them.
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

FAMILIES = ("write_file", "arith", "text_transform", "python_fix")
SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 20
BASE_IMAGE_ALIAS = "python:3.11-slim-bookworm"

_WORDS = ("apple", "river", "stone", "cloud", "green", "tiger", "lemon", "piano", "rocket", "maple",
          "ocean", "pixel", "candle", "forest", "silver", "bridge", "orange", "winter", "garden", "planet")
_FILE_NAMES = ("notes.txt", "hello.txt", "data.txt", "out.txt", "greeting.txt", "result.txt", "word.txt",
               "msg.txt")


@dataclass(frozen=True)
class ToyTask:
    """One toy task. `files` are the initial files under /app (relative path -> content)."""

    family: str
    params: dict[str, Any]
    instruction: str
    oracle: tuple[str, ...]
    test_py: str
    files: dict[str, str] = field(default_factory=dict)
    max_steps: int = 6
    split: str = "train"

    @property
    def task_id(self) -> str:
        return f"toy-{self.family.replace('_', '-')}-{_param_hash(self.family, self.params)[:8]}"

    def materialize(self, root: str | Path) -> Path:
        """Write the Harbor-format task directory `root/<task_id>` and return it."""
        task_dir = Path(root) / self.task_id
        (task_dir / "environment").mkdir(parents=True, exist_ok=True)
        (task_dir / "tests").mkdir(exist_ok=True)
        (task_dir / "solution").mkdir(exist_ok=True)
        (task_dir / "instruction.md").write_text(self.instruction + "\n")
        (task_dir / "task.toml").write_text(self._task_toml())
        dockerfile = [f"FROM {BASE_IMAGE_ALIAS}", "WORKDIR /app"]
        if self.files:
            for rel, content in self.files.items():
                path = task_dir / "environment" / "app" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
            dockerfile.append("COPY --chown=1000:1000 app/ /app/")
        (task_dir / "environment" / "Dockerfile").write_text("\n".join(dockerfile) + "\n")
        (task_dir / "tests" / "test_outputs.py").write_text(self.test_py)
        _write_script(task_dir / "tests" / "test.sh", PYTEST_REWARD_SCRIPT)
        _write_script(task_dir / "solution" / "solve.sh", "#!/bin/bash\nset -e\ncd /app\n" + "\n".join(self.oracle) + "\n")
        return task_dir

    def _task_toml(self) -> str:
        params = json.dumps(self.params, sort_keys=True)
        return (
            'version = "1.0"\n\n[metadata]\n'
            f'family = "{self.family}"\nsplit = "{self.split}"\nparams_json = {json.dumps(params)}\n\n'
            f"[agent]\ntimeout_sec = 180.0\nmax_steps = {self.max_steps}\n\n"
            "[verifier]\ntimeout_sec = 60.0\n\n"
            '[environment]\ncpus = 1\nmemory_mb = 512\nallow_internet = false\nuser = "agent"\nworkdir = "/app"\n'
        )


# The verifier script every pytest-based task ships (Harbor convention: the reward goes to
# /logs/verifier/reward.txt; the pytest -rA summary gives the per-test outcomes the verifier parses).
PYTEST_REWARD_SCRIPT = """#!/bin/bash
mkdir -p /logs/verifier
cd /tests
python3 -m pytest -q -rA -p no:cacheprovider /tests
if [ $? -eq 0 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
"""


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _param_hash(family: str, params: dict[str, Any]) -> str:
    return hashlib.sha256(f"{family}:{json.dumps(params, sort_keys=True)}".encode()).hexdigest()


def split_of(family: str, params: dict[str, Any]) -> str:
    """`heldout` for HELDOUT_PERCENT of the parameter space (by hash), `train` for the rest."""
    return "heldout" if int(_param_hash(family, params)[:8], 16) % 100 < HELDOUT_PERCENT else "train"


# ---- families -------------------------------------------------------------------------------------------------
def _write_file(rng: random.Random) -> dict[str, Any]:
    return {"name": rng.choice(_FILE_NAMES), "content": f"{rng.choice(_WORDS)} {rng.randint(1, 99)}"}


def _write_file_task(p: dict[str, Any]) -> ToyTask:
    path = f"/app/{p['name']}"
    test = (f"def test_file():\n    with open({path!r}) as f:\n        assert f.read().strip() == {p['content']!r}\n")
    return ToyTask("write_file", p, f"Create the file {path} containing the text: {p['content']}",
                   (f"echo {shlex.quote(p['content'])} > {path}",), test, max_steps=4)


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _arith(rng: random.Random) -> dict[str, Any]:
    return {"a": rng.randint(2, 99), "op": rng.choice(sorted(_OPS)), "b": rng.randint(2, 99)}


def _arith_task(p: dict[str, Any]) -> ToyTask:
    result = _OPS[p["op"]](p["a"], p["b"])
    expr = f"{p['a']} {p['op']} {p['b']}"
    test = ("def test_answer():\n    with open('/app/answer.txt') as f:\n"
            f"        assert int(f.read().strip()) == {result}\n")
    return ToyTask("arith", p, f"Compute {expr} and write the result to /app/answer.txt.",
                   (f"echo $(({expr})) > /app/answer.txt",), test, max_steps=4)


_TRANSFORMS: dict[str, tuple[str, str, Callable[[list[str]], list[str]]]] = {
    "upper": ("in uppercase", "tr a-z A-Z < /app/input.txt > /app/output.txt", lambda ls: [s.upper() for s in ls]),
    "sort": ("sorted alphabetically", "sort /app/input.txt > /app/output.txt", sorted),
    "reverse": ("in reverse order", "tac /app/input.txt > /app/output.txt", lambda ls: ls[::-1]),
    "first": ("keeping only the first line", "head -n 1 /app/input.txt > /app/output.txt", lambda ls: ls[:1]),
}


def _text_transform(rng: random.Random) -> dict[str, Any]:
    return {"op": rng.choice(sorted(_TRANSFORMS)), "lines": rng.sample(_WORDS, rng.randint(3, 6))}


def _text_transform_task(p: dict[str, Any]) -> ToyTask:
    how, command, fn = _TRANSFORMS[p["op"]]
    expected = fn(list(p["lines"]))
    test = ("def test_output():\n    with open('/app/output.txt') as f:\n"
            f"        assert f.read().split() == {expected!r}\n")
    return ToyTask("text_transform", p, f"Write the lines of /app/input.txt {how} to /app/output.txt.",
                   (command,), test, files={"input.txt": "\n".join(p["lines"]) + "\n"}, max_steps=4)


# (function, signature, buggy body, fixed body, reference implementation for the tests)
_BUGS: dict[str, tuple[str, str, str, Callable[..., Any]]] = {
    "add": ("a, b", "return a - b", "return a + b", lambda a, b: a + b),
    "multiply": ("a, b", "return a + b", "return a * b", lambda a, b: a * b),
    "maximum": ("a, b", "return min(a, b)", "return max(a, b)", max),
    "is_even": ("n", "return n % 2 == 1", "return n % 2 == 0", lambda n: n % 2 == 0),
    "square": ("n", "return n * 2", "return n * n", lambda n: n * n),
    "last": ("items", "return items[0]", "return items[-1]", lambda items: items[-1]),
}
_MODULES = ("calc", "mathutil", "helpers", "tools")


def _python_fix(rng: random.Random) -> dict[str, Any]:
    return {"fn": rng.choice(sorted(_BUGS)), "module": rng.choice(_MODULES), "seed": rng.randint(0, 999)}


def _example_args(fn: str, rng: random.Random) -> tuple[Any, ...]:
    signature = _BUGS[fn][0]
    if signature == "items":
        return ([rng.randint(1, 50) for _ in range(rng.randint(2, 5))],)
    # distinct args that tell the buggy from the fixed body apart (a != b, a + b != a * b, n not 0 or 2)
    while True:
        args = tuple(rng.randint(3, 40) for _ in signature.split(", "))
        if len(set(args)) == len(args):
            return args


def _python_fix_task(p: dict[str, Any]) -> ToyTask:
    fn, module = p["fn"], p["module"]
    signature, buggy, fixed, reference = _BUGS[fn]
    rng = random.Random(p["seed"])
    source = f"def {fn}({signature}):\n    {buggy}\n"

    def asserts(n: int) -> str:
        lines = []
        for _ in range(n):
            args = _example_args(fn, rng)
            call = f"{fn}({', '.join(repr(a) for a in args)})"
            lines.append(f"    assert {module}.{call} == {reference(*args)!r}")
        return "\n".join(lines) + "\n"

    visible = f"import {module}\n\n\ndef test_{fn}():\n{asserts(2)}"
    hidden = f"import sys\nsys.path.insert(0, '/app')\nimport {module}\n\n\ndef test_{fn}():\n{asserts(3)}"
    oracle = f"sed -i {shlex.quote(f's/{_sed_escape(buggy)}/{_sed_escape(fixed)}/')} /app/{module}.py"
    return ToyTask("python_fix", p, f"Fix the bug in /app/{module}.py so that {fn}() is correct.",
                   (oracle,), hidden, files={f"{module}.py": source, f"test_{module}.py": visible}, max_steps=8)


def _sed_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\/.*[]^$&" else c for c in text)


_SAMPLERS: dict[str, tuple[Callable[[random.Random], dict[str, Any]], Callable[[dict[str, Any]], ToyTask]]] = {
    "write_file": (_write_file, _write_file_task),
    "arith": (_arith, _arith_task),
    "text_transform": (_text_transform, _text_transform_task),
    "python_fix": (_python_fix, _python_fix_task),
}


def make_toy_task(family: str, params: dict[str, Any]) -> ToyTask:
    """The task of `family` with exactly these parameters (e.g. re-created from a task.toml)."""
    if family not in _SAMPLERS:
        raise ValueError(f"unknown toy task family {family!r}; known: {', '.join(FAMILIES)}")
    task = _SAMPLERS[family][1](params)
    return ToyTask(**{**task.__dict__, "split": split_of(family, params)})


def generate_toy_tasks(n: int, *, seed: int = 0, split: str = "train",
                       families: tuple[str, ...] | list[str] = FAMILIES) -> list[ToyTask]:
    """`n` distinct tasks of `split`, families in round-robin, fully determined by `seed`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for family in families:
        if family not in _SAMPLERS:
            raise ValueError(f"unknown toy task family {family!r}; known: {', '.join(FAMILIES)}")
    rng = random.Random(f"toy-tasks:{seed}")
    tasks: list[ToyTask] = []
    seen: set[str] = set()
    attempts = 0
    while len(tasks) < n:
        family = families[len(tasks) % len(families)]
        params = _SAMPLERS[family][0](rng)
        attempts += 1
        if attempts > 200 * max(n, 1):
            raise ValueError(f"could only find {len(tasks)} distinct {split} toy tasks of {families}")
        if split_of(family, params) != split:
            continue
        task = make_toy_task(family, params)
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        tasks.append(task)
    return tasks


def materialize_toy_tasks(root: str | Path, n: int, *, seed: int = 0, split: str = "train",
                          families: tuple[str, ...] | list[str] = FAMILIES) -> list[Path]:
    """Generate and write `n` tasks under `root`; returns their directories."""
    return [task.materialize(root) for task in generate_toy_tasks(n, seed=seed, split=split, families=families)]
