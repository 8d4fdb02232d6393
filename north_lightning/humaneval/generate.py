"""`humaneval generate`: every checkpoint answers every prompt through the OpenCode harness in a sandbox.

The prompts file (YAML):

    rubrics:                      # optional: more categories, or other wording for the default ones
      security: "Does the change avoid introducing a vulnerability?"
    prompts:
      - id: explain-merge         # unique
        category: explain         # explain | edit | visualise | from-scratch, or one named under rubrics
        prompt: "Explain what merge.py does and where it could fail."
        files: {merge.py: "..."}  # optional: put in the sandbox's /app before the agent starts
      - id: fix-maximum
        category: edit
        task: bundled:terminal/toy-python-fix-0ed80921   # optional Harbor task dir (relative to this file,
                                                         # or bundled:...); its tests give the test outcome

A prompt without `task` runs in a task made under OUT/tasks/ from the same base image (`python:3.11-slim-bookworm`
resolves to it) with `files` in /app and no tests. Each response is stored with its full trajectory (the
OpenCode messages: turns, tool calls, observations), the final answer, the diff of the work dir, the test
outcome and log, tokens and time. Checkpoints get random blind ids (`sys-xxxxxxxx`); OUT/mapping.json holds
the mapping and is the only file that names them (keep it from annotators). OUT/humaneval.db is ready for
`humaneval serve` once annotators are added.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from north_lightning.envs.session import TaskSession
from north_lightning.envs.tasks import BUNDLED_DIR, HarborTask, Task, TaskError, load_harbor_task

DEFAULT_RUBRICS = {
    "explain": "Is the explanation correct, complete where it matters, and easy to follow? Did the agent read "
               "the code instead of guessing?",
    "edit": "Does the change do what was asked, keep the rest working (tests), and stay small and clean?",
    "visualise": "Does the output show the data faithfully and readably? Is it the kind of figure asked for?",
    "from-scratch": "Does the new program work and meet the request? Is it simple, idiomatic and well organised?",
}
SNAPSHOT_DIR = "/var/tmp/.humaneval"  # root-only copy of the work dir taken before the agent's first step
BUNDLED_PROMPTS = Path(__file__).resolve().parent / "prompts" / "tiny.yaml"


@dataclass
class Prompt:
    prompt_id: str
    category: str
    text: str
    task_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelSpec:
    name: str
    model: str  # HF export dir or an http(s) URL

    @property
    def is_url(self) -> bool:
        return self.model.startswith(("http://", "https://"))


@dataclass
class GenerateConfig:
    models: list[ModelSpec]
    prompts: str
    out: str
    tokenizer: str | None = None  # for URL models
    api_key_env: str = "OPENAI_API_KEY"
    served_model: str = "policy"
    seed: int = 0
    max_context: int = 4096
    max_tokens_per_turn: int = 512
    max_steps: int | None = None
    default_max_steps: int = 10
    temperature: float = 0.7
    top_p: float = 0.95
    concurrency: int = 2
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


def parse_model_specs(specs: list[str]) -> list[ModelSpec]:
    out = []
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise ValueError(f"--model {spec!r}: expected NAME=HF_DIR or NAME=http://host:port")
        out.append(ModelSpec(name.strip(), model.strip()))
    names = [m.name for m in out]
    if len(out) < 2 or len(set(names)) != len(names):
        raise ValueError(f"--model: need two or more checkpoints with distinct names, got {names}")
    for m in out:
        if not m.is_url and not (Path(m.model) / "config.json").is_file():
            raise ValueError(f"--model {m.name}={m.model}: not an HF export directory (no config.json) nor a URL")
    return out


def load_prompts(path: str | Path) -> tuple[list[Prompt], dict[str, str]]:
    """Prompts and the rubric of every category; errors name the file and the entry."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the prompts file: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("prompts"), list) or not raw["prompts"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'prompts' list")
    rubrics = dict(DEFAULT_RUBRICS)
    extra = raw.get("rubrics") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) and v.strip() for v in extra.values()):
        raise ValueError(f"{path}: 'rubrics' must map category names to rubric text")
    rubrics.update(extra)
    prompts, seen = [], set()
    for i, entry in enumerate(raw["prompts"]):
        where = f"{path}: prompts[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping")
        unknown = set(entry) - {"id", "category", "prompt", "task", "files"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
        pid = str(entry.get("id") or "").strip()
        if not pid or pid in seen or not pid.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"{where}: 'id' must be a unique name of letters, digits, - and _ (got {pid!r})")
        seen.add(pid)
        category = entry.get("category")
        if category not in rubrics:
            raise ValueError(f"{where}: category {category!r} is not one of {sorted(rubrics)} (add it under 'rubrics')")
        task_dir = None
        if entry.get("task"):
            spec = str(entry["task"])
            task_dir = BUNDLED_DIR / spec[len("bundled:"):] if spec.startswith("bundled:") else path.parent / spec
            if not (task_dir / "task.toml").is_file():
                raise ValueError(f"{where}: 'task' {spec!r} is not a Harbor task directory ({task_dir})")
        text = entry.get("prompt")
        if text is None and task_dir is not None:
            text = (task_dir / "instruction.md").read_text().strip()
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: needs a non-empty 'prompt' (or a 'task' whose instruction is used)")
        files = entry.get("files") or {}
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError(f"{where}: 'files' must map relative paths to text")
        if task_dir is not None and files:
            raise ValueError(f"{where}: give either 'task' or 'files', not both")
        prompts.append(Prompt(pid, category, text.strip(), task_dir, files))
    return prompts, rubrics


def materialise_task(prompt: Prompt, root: Path) -> HarborTask:
    """The prompt's task: its Harbor dir (instruction replaced by the prompt text), or one made from `files`."""
    if prompt.task_dir is not None:
        task = load_harbor_task(prompt.task_dir)
        task.instruction = prompt.text
        return task
    task_dir = root / f"humaneval-{prompt.prompt_id}"
    app = task_dir / "environment" / "app"
    app.mkdir(parents=True, exist_ok=True)
    for rel, text in prompt.files.items():
        target = (app / rel).resolve()
        if not str(target).startswith(str(app.resolve()) + os.sep):
            raise ValueError(f"prompt {prompt.prompt_id}: file {rel!r} leaves the work dir")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (app / ".keep").write_text("")
    (task_dir / "environment" / "Dockerfile").write_text(
        "FROM python:3.11-slim-bookworm\nWORKDIR /app\nCOPY --chown=1000:1000 app/ /app/\n")
    (task_dir / "instruction.md").write_text(prompt.text + "\n")
    (task_dir / "tests").mkdir(exist_ok=True)
    (task_dir / "tests" / "test.sh").write_text("#!/bin/bash\nmkdir -p /logs/verifier\necho 0 > /logs/verifier/reward.txt\n")
    (task_dir / "task.toml").write_text(
        'version = "1.0"\n\n[agent]\ntimeout_sec = 600.0\nmax_steps = 10\n\n[verifier]\ntimeout_sec = 60.0\n\n'
        '[environment]\ncpus = 1\nmemory_mb = 1024\nallow_internet = false\nuser = "agent"\nworkdir = "/app"\n')
    return load_harbor_task(task_dir)


class RecordingSession(TaskSession):
    """A task session that also records the diff the agent made to the work dir: a root-only snapshot is
    taken at start, and compared with the work dir before the tests run (or at close, when they do not)."""

    final_diff: str | None = None

    def start(self) -> "RecordingSession":
        super().start()
        workdir = self.task.workdir or "/"
        if workdir != "/":
            self.box.exec(f"mkdir -p {SNAPSHOT_DIR} && chmod 700 {SNAPSHOT_DIR} && "
                          f"cp -a {shlex.quote(workdir)} {SNAPSHOT_DIR}/a", user="root")
        return self

    def capture_diff(self) -> None:
        if self.final_diff is not None or self.box is None or not self.box.is_running():
            return
        workdir = self.task.workdir or "/"
        if workdir == "/":
            self.final_diff = ""
            return
        script = (f"cd {SNAPSHOT_DIR} && rm -rf b && cp -a {shlex.quote(workdir)} b && "
                  "find a b \\( -name __pycache__ -o -name .pytest_cache \\) -prune -exec rm -rf {} + ; "
                  "git -c core.quotepath=off diff --no-index --no-color --src-prefix= --dst-prefix= -- a b 2>/dev/null;"
                  " true")
        code, out = self.box.exec(script, user="root")
        self.final_diff = out if code == 0 else ""

    def verify(self) -> Any:
        self.capture_diff()
        return super().verify()

    def close(self) -> None:
        self.capture_diff()
        super().close()


def build_policy(spec: ModelSpec, cfg: GenerateConfig) -> tuple[Any, Any]:
    """(policy, tokenizer) for a checkpoint: the in-process vLLM engine for an HF dir, the OpenAI-compatible
    client for a URL (its API key from the environment variable `cfg.api_key_env`, when set)."""
    from transformers import AutoTokenizer

    if spec.is_url:
        from north_lightning.assets import tiny_tokenizer_path
        from north_lightning.rl.engines.server import OpenAIServerPolicy

        policy = OpenAIServerPolicy(spec.model, model=cfg.served_model, api_key=os.environ.get(cfg.api_key_env))
        return policy, AutoTokenizer.from_pretrained(cfg.tokenizer or tiny_tokenizer_path())
    from north_lightning.rl.engines.inprocess import VLLMEngine

    engine = VLLMEngine(spec.model, max_model_len=cfg.max_context, seed=cfg.seed, **cfg.engine_kwargs)
    return engine, AutoTokenizer.from_pretrained(spec.model)


def _final_answer(messages: list[dict[str, Any]], end_reason: str) -> str:
    """OpenCode ends with a reply without tool calls: that text is the answer. An episode cut short (a reply
    truncated at max_tokens, a format error, the step budget) has none."""
    if end_reason != "submitted":
        return ""
    for msg in reversed(messages):
        if msg.get("role") == "assistant":
            return "" if msg.get("tool_calls") else str(msg.get("content") or "")
    return ""


def run_prompt(policy: Any, tokenizer: Any, task: Task, prompt: Prompt, cfg: GenerateConfig, seed: int,
               system: str) -> dict[str, Any]:
    """One episode of one checkpoint on one prompt, as the stored response record."""
    from north_lightning.rl.rollout import RolloutConfig, run_episode

    sessions: list[RecordingSession] = []

    def session_factory(t: Task, **kwargs: Any) -> RecordingSession:
        sessions.append(RecordingSession(t, **kwargs))
        return sessions[-1]

    rollout = RolloutConfig(max_context=cfg.max_context, max_tokens_per_turn=cfg.max_tokens_per_turn,
                            temperature=cfg.temperature, top_p=cfg.top_p,
                            max_steps=cfg.max_steps or (None if prompt.task_dir else cfg.default_max_steps))
    started = time.monotonic()
    episode = run_episode(policy, "opencode", tokenizer, task, config=rollout, seed=seed,
                          session_factory=session_factory)
    has_tests = prompt.task_dir is not None
    verdict = episode.verifier or {}
    generated = sum(len(s.token_ids) for s in episode.segments if s.trainable)
    return {
        "response_id": "r-" + secrets.token_hex(6), "prompt_id": prompt.prompt_id, "system": system,
        "category": prompt.category, "prompt": prompt.text, "task_id": task.task_id if has_tests else None,
        # an episode cut short (format error, truncated reply) is not scored: it failed its tests
        "passed": episode.reward >= 1.0 if has_tests else None,
        "reward": episode.reward if has_tests else None,
        "test_log": ((verdict.get("output") or "")[-8000:] if episode.verifier is not None
                     else f"tests not run: the episode ended with {episode.end_reason}") if has_tests else "",
        "final_answer": _final_answer(episode.messages, episode.end_reason),
        "diff": (sessions[0].final_diff or "") if sessions else "",
        "messages": episode.messages, "end_reason": episode.end_reason, "steps": episode.steps,
        "tokens": {"prompt": len(episode.segments[0].token_ids) if episode.segments else 0,
                   "generated": generated, "total": episode.num_tokens},
        "seconds": round(time.monotonic() - started, 3), "timings": episode.timings,
    }


def run_generate(cfg: GenerateConfig, policies: dict[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """Run every model on every prompt; write OUT/responses.jsonl, OUT/mapping.json and OUT/humaneval.db.
    `policies` ({name: (policy, tokenizer)}) reuses engines that already run (tests); otherwise each
    checkpoint's engine is built, used for all prompts and closed before the next (one in memory at a time;
    names that share a checkpoint share its engine)."""
    from north_lightning.humaneval import db

    prompts, rubrics = load_prompts(cfg.prompts)
    out = Path(cfg.out)
    if (out / "humaneval.db").exists() or (out / "responses.jsonl").exists():
        raise ValueError(f"{out}: already holds a generate run (new blind ids would mix with its votes); "
                         "choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    try:
        tasks = [materialise_task(p, out / "tasks") for p in prompts]
    except TaskError as err:
        raise ValueError(str(err)) from err
    blind = {m.name: "sys-" + secrets.token_hex(4) for m in cfg.models}
    (out / "mapping.json").write_text(json.dumps({blind[m.name]: {"name": m.name, "model": m.model}
                                                  for m in cfg.models}, indent=2) + "\n")
    records: list[dict[str, Any]] = []
    by_checkpoint: dict[str, list[ModelSpec]] = {}
    for m in cfg.models:
        by_checkpoint.setdefault(m.model, []).append(m)
    for specs in by_checkpoint.values():
        shared = build_policy(specs[0], cfg) if policies is None else None
        try:
            for spec in specs:
                policy, tokenizer = shared if shared is not None else policies[spec.name]  # type: ignore[index]
                m_index = cfg.models.index(spec)
                jobs = [(p, t, (cfg.seed * 1_000 + m_index) * 10_007 + i) for i, (p, t) in enumerate(zip(prompts, tasks))]
                with ThreadPoolExecutor(max(1, cfg.concurrency), thread_name_prefix="humaneval") as pool:
                    records += list(pool.map(lambda job: run_prompt(policy, tokenizer, job[1], job[0], cfg, job[2],
                                                                    blind[spec.name]), jobs))
        finally:
            if shared is not None and hasattr(shared[0], "close"):
                shared[0].close()
    with open(out / "responses.jsonl", "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    conn = db.connect(out / "humaneval.db")
    items = db.load_responses(conn, records, rubrics)
    conn.close()
    return {"responses": len(records), "items": items, "out": str(out), "db": str(out / "humaneval.db"),
            "end_reasons": {r: sum(x["end_reason"] == r for x in records) for r in {x["end_reason"] for x in records}}}
