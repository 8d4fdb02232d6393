"""Train the tiny byte-level BPE tokenizer shipped in `north_lightning/assets/tiny_tokenizer/`.

Why a tokenizer of our own: tests, the demo and CI run offline (no model hub), yet every stage (SFT masks,
vLLM rollouts, HF export) needs a real HF tokenizer with a chat template. North Mini Code's own tokenizer has
262,144 tokens; this one has at most 4,096, which matches the `tiny` model preset.

The corpus is what agent trajectories look like: Python source (a fixed list of standard-library modules of
the running interpreter), shell commands, terminal output and JSON tool calls generated from a seeded
grammar. Training is deterministic for a given Python version; the committed files are the artifact, so
re-running the script is only needed to change the tokenizer.

It also writes `north_lightning/assets/demo_chat.jsonl`, a few hundred seeded toy agent conversations
(tool schema, tool calls, tool results) that the tiny demo SFT run learns in a few CPU minutes.

    .venv/bin/python scripts/make_tiny_tokenizer.py [--out DIR] [--demo-data FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sysconfig
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 4096
BOS, EOS, PAD, UNK = "<BOS_TOKEN>", "<EOS_TOKEN>", "<PAD>", "<UNK>"
# Cohere convention: the tokenizer's eos_token is the end-of-turn marker, so generation (vLLM, HF) stops at
# the end of an assistant turn. `<EOS_TOKEN>` still exists (end of a whole document) as in Cohere's vocab.
END_OF_TURN = "<|END_OF_TURN_TOKEN|>"
# Cohere-style turn markers, plus markers for tool calls and the tool-result role.
TURN_TOKENS = [
    "<|START_OF_TURN_TOKEN|>",
    END_OF_TURN,
    "<|SYSTEM_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|TOOL_TOKEN|>",
    "<|START_ACTION|>",
    "<|END_ACTION|>",
]
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *TURN_TOKENS]

STDLIB_FILES = [
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "contextlib.py", "csv.py", "dataclasses.py", "datetime.py", "difflib.py", "enum.py", "fnmatch.py",
    "functools.py", "glob.py", "heapq.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py",
    "os.py", "pathlib.py", "pprint.py", "random.py", "re/__init__.py", "shlex.py", "shutil.py", "statistics.py",
    "string.py", "subprocess.py", "tempfile.py", "textwrap.py", "typing.py", "unittest/case.py", "uuid.py",
]

# The chat template. Every assistant turn's content, tool calls and end-of-turn token sit inside
# `{% generation %}` so `return_assistant_tokens_mask=True` marks exactly the tokens the model must learn to
# produce (including when to stop the turn). Tool schemas go into the system turn; tool calls are rendered
# as a JSON list between action markers; tool results get their own turn role.
CHAT_TEMPLATE = """\
{{- bos_token }}
{%- set msgs = messages %}
{%- set system = none %}
{%- if msgs and msgs[0]['role'] == 'system' %}
    {%- set system = msgs[0]['content'] %}
    {%- set msgs = msgs[1:] %}
{%- endif %}
{%- if system is not none or tools %}
    {{- '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' }}
    {%- if system is not none %}
        {{- system }}
    {%- endif %}
    {%- if tools %}
        {%- if system is not none %}
            {{- '\\n\\n' }}
        {%- endif %}
        {{- '# Tools\\nCall tools by writing a JSON list of {"name": ..., "arguments": {...}} objects between '
            '<|START_ACTION|> and <|END_ACTION|>. Available tools:' }}
        {%- for tool in tools %}
            {{- '\\n' + (tool | tojson) }}
        {%- endfor %}
    {%- endif %}
    {{- '<|END_OF_TURN_TOKEN|>' }}
{%- endif %}
{%- for message in msgs %}
    {%- if message['role'] == 'user' %}
        {{- '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + message['content'] + '<|END_OF_TURN_TOKEN|>' }}
    {%- elif message['role'] == 'system' %}
        {{- '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + message['content'] + '<|END_OF_TURN_TOKEN|>' }}
    {%- elif message['role'] == 'tool' %}
        {{- '<|START_OF_TURN_TOKEN|><|TOOL_TOKEN|>' + message['content'] + '<|END_OF_TURN_TOKEN|>' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}
        {%- generation %}
            {%- if message['content'] %}
                {{- message['content'] }}
            {%- endif %}
            {%- if message['tool_calls'] %}
                {{- '<|START_ACTION|>[' }}
                {%- for call in message['tool_calls'] %}
                    {%- set fn = call['function'] if call['function'] is defined else call %}
                    {%- if not loop.first %}
                        {{- ', ' }}
                    {%- endif %}
                    {%- set args = fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson) %}
                    {{- '{"name": ' + (fn['name'] | tojson) + ', "arguments": ' + args + '}' }}
                {%- endfor %}
                {{- ']<|END_ACTION|>' }}
            {%- endif %}
            {{- '<|END_OF_TURN_TOKEN|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- raise_exception('unsupported chat role: ' + message['role']) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}
{%- endif %}
"""


def _shell_corpus(rng: random.Random, n_lines: int) -> list[str]:
    """Seeded shell commands, terminal output and JSON tool calls: the text agent trajectories consist of."""
    files = ["main.py", "app.py", "README.md", "output.txt", "result.txt", "data.csv", "config.json",
             "test_app.py", "solution.sh", "notes.txt", "/app/run.sh", "/tmp/log.txt", "src/utils.py"]
    words = ["hello", "world", "value", "count", "total", "error", "result", "answer", "input", "output",
             "file", "line", "number", "string", "list", "test", "check", "done", "sum", "upper", "lower"]
    templates = [
        "ls -la {d}", "cat {f}", "echo '{w} {w}' > {f}", "echo $(( {n} + {n} )) > {f}", "mkdir -p {d}",
        "cd {d} && ls", "grep -n '{w}' {f}", "sed -i 's/{w}/{w}/g' {f}", "python3 {f}", "wc -l {f}",
        "head -n {n} {f}", "tail -n {n} {f}", "cp {f} {f}", "rm -f {f}", "chmod +x {f}", "pytest -q {f}",
        "python3 -c 'print({n} * {n})'", "tr a-z A-Z < {f} > {f}", "sort {f} | uniq -c", "cat > {f} << 'EOF'",
        "find {d} -name '*.py'", "pip install {w}", "git diff {f}", "awk '{{print $1}}' {f}", "exit {n}",
    ]
    dirs = ["/app", "/tmp", "/workspace", ".", "src", "tests", "/home/user"]
    out: list[str] = []
    for _ in range(n_lines):
        cmd = rng.choice(templates).format_map(_Fill(rng, files, dirs, words))
        kind = rng.random()
        if kind < 0.4:
            out.append(f"$ {cmd}")
        elif kind < 0.7:
            call = {"name": rng.choice(["bash", "terminal", "str_replace_editor", "submit"]),
                    "arguments": {"command": cmd}}
            out.append(json.dumps([call]))
        elif kind < 0.85:
            out.append(json.dumps({"analysis": f"The {rng.choice(words)} is {rng.randint(0, 999)}.",
                                   "plan": f"Run {cmd}", "commands": [{"keystrokes": cmd + "\n", "duration": 1.0}],
                                   "task_complete": rng.random() < 0.2}))
        else:
            out.append(f"{rng.choice(words)}: {rng.randint(0, 99999)}\nroot@container:/app# {cmd}\nExit code: "
                       f"{rng.randint(0, 2)}")
    return out


class _Fill(dict):
    """format_map filler that draws a fresh random value for each placeholder occurrence."""

    def __init__(self, rng: random.Random, files: list[str], dirs: list[str], words: list[str]) -> None:
        super().__init__()
        self.rng, self.files, self.dirs, self.words = rng, files, dirs, words

    def __missing__(self, key: str) -> str:
        if key == "f":
            return self.rng.choice(self.files)
        if key == "d":
            return self.rng.choice(self.dirs)
        if key == "w":
            return self.rng.choice(self.words)
        if key == "n":
            return str(self.rng.randint(0, 500))
        raise KeyError(key)


def build_corpus(seed: int = 0) -> list[str]:
    """Corpus lines: standard-library sources (in a fixed order) then seeded shell/JSON text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for rel in STDLIB_FILES:
        path = stdlib / rel
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    texts.extend(_shell_corpus(random.Random(seed), 20000))
    return texts


def train_tokenizer(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    return tok


def save(tok: Tokenizer, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[EOS, *TURN_TOKENS],
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(out_dir))


BASH_TOOL = {"type": "function", "function": {
    "name": "bash", "description": "Run a shell command in the task container and return its output.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}


def demo_conversations(seed: int, n: int) -> list[dict]:
    """Toy terminal tasks solved with one tool call, then a check and a final answer."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "north", "cohere", "lightning", "token", "agent"]
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        name = rng.choice(["out", "answer", "result", "sum"]) + ".txt"
        word = rng.choice(words)
        kind = rng.randrange(3)
        if kind == 0:
            task, cmd, result = f"Write the sum of {a} and {b} to /app/{name}.", f"echo $(({a}+{b})) > /app/{name}", str(a + b)
        elif kind == 1:
            task, cmd, result = f"Write the word {word} in upper case to /app/{name}.", \
                f"echo {word} | tr a-z A-Z > /app/{name}", word.upper()
        else:
            task, cmd, result = f"Write the product of {a} and {b} to /app/{name}.", f"echo $(({a}*{b})) > /app/{name}", str(a * b)
        call = lambda c: [{"type": "function", "function": {"name": "bash", "arguments": {"command": c}}}]  # noqa: E731
        rows.append({"tools": [BASH_TOOL], "messages": [
            {"role": "system", "content": "You are a terminal agent. Solve the task with the bash tool."},
            {"role": "user", "content": task},
            {"role": "assistant", "content": "I will write it with one command.", "tool_calls": call(cmd)},
            {"role": "tool", "content": ""},
            {"role": "assistant", "content": "Let me check the file.", "tool_calls": call(f"cat /app/{name}")},
            {"role": "tool", "content": result},
            {"role": "assistant", "content": f"Done: /app/{name} contains {result}."},
        ]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "north_lightning" / "assets" / "tiny_tokenizer"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--demo-data", type=Path, default=default_out.parent / "demo_chat.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.demo_data, "w", encoding="utf-8") as f:
        for row in demo_conversations(args.seed, 200):
            f.write(json.dumps(row) + "\n")
    tok = train_tokenizer(build_corpus(args.seed))
    assert tok.get_vocab_size() <= VOCAB_SIZE, tok.get_vocab_size()
    save(tok, args.out)
    print(f"wrote {args.out} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
