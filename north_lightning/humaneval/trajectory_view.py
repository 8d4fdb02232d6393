"""What the rating page shows of one response: turns (assistant text, tool calls, observations), the final
diff highlighted with Pygments, the test outcome and log, the final answer, and the cost (tokens, time).

The blind page must not leak the model: only the stored trajectory is shown, never the system id."""

from __future__ import annotations

import json
from typing import Any

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

_FORMATTER = HtmlFormatter(cssclass="hl", nowrap=False)
PYGMENTS_CSS = _FORMATTER.get_style_defs(".hl")
MAX_OBSERVATION_CHARS = 4000


def _observation(content: str) -> tuple[str, int | None]:
    """OpenCode tool results are JSON `{"output": ..., "metadata": {"exit": ...}}`: the output and exit code."""
    try:
        parsed = json.loads(content)
    except (TypeError, ValueError):
        return content, None
    if not isinstance(parsed, dict):
        return content, None
    meta = parsed.get("metadata") if isinstance(parsed.get("metadata"), dict) else {}
    code = meta.get("exit")
    return str(parsed.get("output", content)), code if isinstance(code, int) else None


def turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One turn per assistant message, with the tool observations that answered it."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.get("role")
        if role == "assistant":
            calls = []
            for call in msg.get("tool_calls") or []:
                fn = call.get("function", call)
                args = fn.get("arguments", {})
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        pass
                calls.append({"name": fn.get("name", "?"),
                              "arguments": json.dumps(args, indent=1, ensure_ascii=False) if not isinstance(args, str)
                              else args})
            out.append({"text": msg.get("content") or "", "calls": calls, "observations": []})
        elif role == "tool" and out:
            text, code = _observation(msg.get("content") or "")
            if len(text) > MAX_OBSERVATION_CHARS:
                text = text[:MAX_OBSERVATION_CHARS] + f"\n... ({len(text) - MAX_OBSERVATION_CHARS} more characters)"
            out[-1]["observations"].append({"name": msg.get("name", "tool"), "text": text, "exit": code})
    return out


def response_view(rec: dict[str, Any]) -> dict[str, Any]:
    diff = rec.get("diff") or ""
    tests = rec.get("passed")
    return {
        "prompt": rec.get("prompt", ""),
        "final_answer": rec.get("final_answer") or "",
        "diff": diff,
        "diff_html": Markup(highlight(diff, DiffLexer(), _FORMATTER)) if diff else None,
        "tests": "no tests" if tests is None else ("passed" if tests else "failed"),
        "test_log": rec.get("test_log") or "",
        "turns": turns(rec.get("messages") or []),
        "tokens": (rec.get("tokens") or {}).get("generated"),
        "seconds": rec.get("seconds"),
        "end_reason": rec.get("end_reason", ""),
    }
