"""Per-operator pass@1 of a text_transform eval: `python scripts/perop_eval.py TASKS_DIR EVAL.csv [EVAL.csv ...]`.

Diagnostic for the tiny RL stage: the held-out text_transform tasks mix four operators, and a change in overall
pass@1 can hide opposite moves per operator (RL favouring one command everywhere)."""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

OPS = {"in uppercase": "upper", "sorted alphabetically": "sort", "in reverse order": "reverse",
       "keeping only the first line": "first"}


def task_ops(tasks_dir: Path) -> dict[str, str]:
    ops = {}
    for instruction in tasks_dir.glob("*/instruction.md"):
        text = instruction.read_text()
        ops[instruction.parent.name] = next((op for phrase, op in OPS.items() if phrase in text), "other")
    return ops


def main() -> None:
    ops = task_ops(Path(sys.argv[1]))
    for path in sys.argv[2:]:
        hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in csv.DictReader(open(path)):
            op = ops.get(row["task_id"], "other")
            for key in (op, "all"):
                hits[key][0] += int(row["successes"])
                hits[key][1] += int(row["samples"])
        print(path, "  ".join(f"{k} {s / n:.3f} ({n})" for k, (s, n) in sorted(hits.items())))


if __name__ == "__main__":
    main()
