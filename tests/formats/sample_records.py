"""Small trajectories shared by the datamodule tests (built in code, so every test sees the same data)."""

from __future__ import annotations

from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.records import Observation, Step, Trajectory


def agnostic_record(i: int = 0, *, source: str = "toy") -> Trajectory:
    return Trajectory(
        id=f"agn-{i}",
        task=f"Write the number {i} to /app/n.txt and show it.",
        source=source,
        steps=(
            Step("Check the directory first.", (ToolCall("bash", {"command": "ls /app"}),), (Observation("", 0),)),
            Step("Write the file.", (ToolCall("bash", {"command": f"echo {i} > /app/n.txt && cat /app/n.txt"}),),
                 (Observation(f"{i}\n", 0),)),
            Step("The file is correct.", (ToolCall("submit", {}),)),
        ),
        verified=True,
    )


def swe_record() -> Trajectory:
    edit = {"command": "str_replace", "path": "/testbed/m.py", "old_str": "a - b", "new_str": "a + b"}
    return Trajectory(
        id="swe-0",
        task="add() subtracts instead of adding.",
        source="swe",
        harness="swe_agent",
        steps=(
            Step("View the file.", (ToolCall("str_replace_editor", {"command": "view", "path": "/testbed/m.py"}),),
                 (Observation("     1\tdef add(a, b):\n     2\t    return a - b\n"),)),
            Step("Fix it.", (ToolCall("str_replace_editor", edit),), (Observation("The file /testbed/m.py has been edited."),)),
            Step("", (ToolCall("submit", {}),)),
        ),
    )


def opencode_record() -> Trajectory:
    return Trajectory(
        id="oc-0",
        task="Fix the typo in /app/README.md",
        source="oc",
        harness="opencode",
        steps=(
            Step("", (ToolCall("read", {"filePath": "/app/README.md"}), ToolCall("glob", {"pattern": "*.md"})),
                 (Observation("1\tteh project\n"), Observation("/app/README.md"))),
            Step("", (ToolCall("edit", {"filePath": "/app/README.md", "oldString": "teh", "newString": "the"}),),
                 (Observation(""),)),
            Step("", (ToolCall("submit", {}),)),
        ),
        response="Fixed the typo.",
    )


def chat_record(i: int = 0, *, source: str = "chat", n_words: int = 20) -> Trajectory:
    return Trajectory(id=f"chat-{i}", task=f"Question {i}?", source=source, domain="reasoning",
                      response=" ".join(["answer"] * n_words), harness="chat")
