"""Does the tiny model read the instruction? Teacher-forced P(transform command | instruction) at the action step.

Why: pass@1 on `text_transform` mixes two skills, emitting a well-formed call and choosing the transform the
instruction asks for. A model that picks by prior scores ~0.25 x (well-formed rate) whatever its preferences, and RL
on such a model only moves the preferences. This prints, per instruction, the model's probability of each of the
four canonical commands after the canonical first turn (`cat /app/input.txt`) of each held-out task, and the mean
probability of the right one (0.25 = no conditioning).

    python scripts/tiny_conditioning.py MODEL_DIR EVAL_OUT.transcripts.jsonl
(the transcripts of `eval --set transcripts=true` on text_transform tasks supply each task's prompt and observation)
"""

import collections
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

COMMANDS = {"upper": "tr a-z A-Z < /app/input.txt > /app/output.txt", "sort": "sort /app/input.txt > /app/output.txt",
            "reverse": "tac /app/input.txt > /app/output.txt", "first": "head -n 1 /app/input.txt > /app/output.txt"}
INSTRUCTION_OP = {"in uppercase": "upper", "sorted alphabetically": "sort", "in reverse order": "reverse",
                  "keeping only the first line": "first"}
FIRST_TURN = ('Let me look at the starting state first.<|START_ACTION|>[{"name": "bash", "arguments": '
              '{"command": "cat /app/input.txt"}}]<|END_ACTION|><|END_OF_TURN_TOKEN|>')
ACTION_PREFIX = 'Apply the change.<|START_ACTION|>[{"name": "bash", "arguments": {"command": "'


def command_logprob(model, tok, prefix: str, command: str) -> float:
    prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    ids = tok(prefix + command + '"}}]', add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, ids[i]].item() for i in range(len(prefix_ids), len(ids)))


def main(model_dir: str, transcripts: str) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seen: set[str] = set()
    totals, counts = collections.defaultdict(lambda: torch.zeros(len(COMMANDS))), collections.Counter()
    for line in open(transcripts):
        episode = json.loads(line)
        segments = episode["segments"]
        # one prompt per task; the observation of `cat /app/input.txt` is taken from an episode that ran it
        if episode["task_id"] in seen or len(segments) < 3 or "cat /app/input.txt" not in segments[1]["text"]:
            continue
        op = next((v for k, v in INSTRUCTION_OP.items() if k in segments[0]["text"]), None)
        if op is None:
            continue
        seen.add(episode["task_id"])
        prefix = segments[0]["text"] + FIRST_TURN + segments[2]["text"] + ACTION_PREFIX
        logps = torch.tensor([command_logprob(model, tok, prefix, cmd) for cmd in COMMANDS.values()])
        totals[op] += logps.softmax(0)
        counts[op] += 1
    if not counts:
        sys.exit(f"{transcripts}: no text_transform episode whose first action is `cat /app/input.txt`")
    print("instruction \\ P(command): " + " ".join(f"{k:>8}" for k in COMMANDS))
    right = []
    for op in COMMANDS:
        if counts[op]:
            row = totals[op] / counts[op]
            right.append(row[list(COMMANDS).index(op)].item())
            print(f"{op:>11} ({counts[op]:2d} tasks): " + " ".join(f"{v:8.3f}" for v in row.tolist()))
    print(f"mean P(right command)={sum(right) / len(right):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
