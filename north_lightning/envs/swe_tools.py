"""SWE-agent's tools on a sandbox: `bash`, `str_replace_editor`, `submit`, plus OpenCode's file tools.

`str_replace_editor` keeps the messages users of SWE-agent know (e.g. "No replacement was performed,
old_str `x` did not appear verbatim in /p.", "Here's the result of running `cat -n` on /p:"), so trajectories
recorded with SWE-agent and rollouts here read the same. Files are read inside the container as the agent's
user (its file permissions apply: `view /etc/shadow` is denied as `cat` would be), at most
`EDITOR_MAX_READ_BYTES` (a longer file is shown cut, with a marker, and cannot be edited here); they are written
through the sandbox's tar interface (no quoting pitfalls); the undo history lives on the host, per path, like
SWE-agent's.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from pathlib import PurePosixPath
from typing import Any

from north_lightning.envs.sandbox import TRUNCATION_MARKER, DockerSandbox

SNIPPET_LINES = 4
EDITOR_MAX_READ_BYTES = 1_000_000
MAX_VIEW_CHARS = 16_000
TRUNCATED_NOTE = ("<response clipped><NOTE>To save on context only part of this file has been shown to you. You "
                  "should retry this tool after you have searched inside the file with `grep -n` in order to find "
                  "the line numbers of what you are looking for.</NOTE>")
EDITOR_COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")


class ToolFailure(Exception):
    """An editor error: its message is the observation shown to the agent (the episode goes on)."""


def _numbered(text: str, start: int = 1) -> str:
    if len(text) > MAX_VIEW_CHARS:
        text = text[:MAX_VIEW_CHARS] + TRUNCATED_NOTE
    text = text.expandtabs()
    return "\n".join(f"{i + start:6}\t{line}" for i, line in enumerate(text.split("\n")))


class StrReplaceEditor:
    """`str_replace_editor` (view / create / str_replace / insert / undo_edit) over a sandbox."""

    name = "str_replace_editor"

    def __init__(self, box: DockerSandbox, *, user: str | None = None):
        self.box = box
        self.user = user
        self.history: dict[str, list[str]] = defaultdict(list)

    def __call__(self, command: str = "", path: str = "", file_text: str | None = None,
                 old_str: str | None = None, new_str: str | None = None, insert_line: int | None = None,
                 view_range: list[int] | None = None, **_: Any) -> str:
        try:
            if command not in EDITOR_COMMANDS:
                raise ToolFailure(f"Unrecognized command {command}. The allowed commands for the {self.name} tool "
                                  f"are: {', '.join(EDITOR_COMMANDS)}")
            kind = self._validate_path(command, path)
            if command == "view":
                return self.view(path, kind, view_range)
            if command == "create":
                if file_text is None:
                    raise ToolFailure("Parameter `file_text` is required for command: create")
                self._write(path, file_text)
                self.history[path].append(file_text)
                return f"File created successfully at: {path}"
            if command == "str_replace":
                if old_str is None:
                    raise ToolFailure("Parameter `old_str` is required for command: str_replace")
                return self.str_replace(path, old_str, new_str or "")
            if command == "insert":
                if insert_line is None:
                    raise ToolFailure("Parameter `insert_line` is required for command: insert")
                if new_str is None:
                    raise ToolFailure("Parameter `new_str` is required for command: insert")
                return self.insert(path, int(insert_line), new_str)
            return self.undo_edit(path)
        except ToolFailure as failure:
            return str(failure)

    # helpers
    def _exists(self, path: str) -> str | None:
        code, out = self.box.exec(["bash", "-c", 'if [ -d "$1" ]; then echo dir; elif [ -e "$1" ]; then echo file; '
                                   'else echo none; fi', "probe", path], user=self.user)
        kind = out.strip()
        return None if kind == "none" else kind

    def _validate_path(self, command: str, path: str) -> str | None:
        if not PurePosixPath(path).is_absolute():
            suggestion = PurePosixPath("/") / path
            raise ToolFailure(f"The path {path} is not an absolute path, it should start with `/`. "
                              f"Maybe you meant {suggestion}?")
        kind = self._exists(path)
        if kind is None and command != "create":
            raise ToolFailure(f"The path {path} does not exist. Please provide a valid path.")
        if kind is not None and command == "create":
            raise ToolFailure(f"File already exists at: {path}. Cannot overwrite files using command `create`.")
        if kind == "dir" and command != "view":
            raise ToolFailure(f"The path {path} is a directory and only the `view` command can be used on "
                              "directories")
        return kind

    def _read(self, path: str, *, whole: bool = False) -> str:
        """The file's text, read in the container as the editor's user; a file over `EDITOR_MAX_READ_BYTES`
        comes back cut with a marker, or, with `whole` (an edit needs all of it), is refused."""
        limit = EDITOR_MAX_READ_BYTES
        code, out = self.box.exec(["bash", "-c", 'stat -L -c %s -- "$1" && head -c "$2" -- "$1"', "read", path,
                                   str(limit)], user=self.user, max_output_bytes=2 * limit + 256)
        size_line, _, text = out.partition("\n")
        if code != 0 or not size_line.strip().isdigit():
            reason = out.strip().splitlines()[-1] if out.strip() else f"exit code {code}"
            raise ToolFailure(f"Cannot read {path}: {reason}")
        size = int(size_line)
        if size > limit:
            if whole:
                raise ToolFailure(f"The file {path} is {size} bytes, more than this editor handles ({limit}); "
                                  "edit it with bash (sed, python) instead.")
            text += TRUNCATION_MARKER.format(shown=limit, size=size)
        return text

    def _write(self, path: str, text: str) -> None:
        parent = str(PurePosixPath(path).parent)
        code, out = self.box.exec(["bash", "-c", 'mkdir -p "$1" && touch "$2"', "mk", parent, path], user=self.user)
        if code != 0:
            raise ToolFailure(f"Ran into {out.strip()} while trying to write to {path}")
        uid_code, uid = self.box.exec(["stat", "-c", "%u", path], user=self.user)
        self.box.put_files({path: text}, owner=int(uid.strip()) if uid_code == 0 else None)

    def _snippet(self, text: str, line: int, extra: int) -> tuple[str, int]:
        lines = text.split("\n")
        start = max(0, line - SNIPPET_LINES)
        end = line + SNIPPET_LINES + extra
        return "\n".join(lines[start : end + 1]), start + 1

    # commands
    def view(self, path: str, kind: str | None, view_range: list[int] | None) -> str:
        if kind == "dir":
            if view_range:
                raise ToolFailure("The `view_range` parameter is not allowed when `path` points to a directory.")
            code, out = self.box.exec(["find", path, "-maxdepth", "2", "-not", "-path", "*/.*"], user=self.user)
            return (f"Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n"
                    f"{out}\n")
        text = self._read(path)
        start = 1
        if view_range:
            if len(view_range) != 2 or not all(isinstance(i, int) for i in view_range):
                raise ToolFailure("Invalid `view_range`. It should be a list of two integers.")
            lines = text.split("\n")
            first, last = view_range
            if first < 1 or first > len(lines):
                raise ToolFailure(f"Invalid `view_range`: {view_range}. Its first element `{first}` should be "
                                  f"within the range of lines of the file: {[1, len(lines)]}")
            if last > len(lines):
                raise ToolFailure(f"Invalid `view_range`: {view_range}. Its second element `{last}` should be "
                                  f"smaller than the number of lines in the file: `{len(lines)}`")
            if last != -1 and last < first:
                raise ToolFailure(f"Invalid `view_range`: {view_range}. Its second element `{last}` should be "
                                  f"larger or equal than its first `{first}`")
            text = "\n".join(lines[first - 1 :] if last == -1 else lines[first - 1 : last])
            start = first
        return f"Here's the result of running `cat -n` on {path}:\n{_numbered(text, start)}\n"

    def str_replace(self, path: str, old_str: str, new_str: str) -> str:
        text = self._read(path, whole=True).expandtabs()
        old_str, new_str = old_str.expandtabs(), new_str.expandtabs()
        count = text.count(old_str)
        if count == 0:
            raise ToolFailure(f"No replacement was performed, old_str `{old_str}` did not appear verbatim in {path}.")
        if count > 1:
            lines = [i + 1 for i, line in enumerate(text.split("\n")) if old_str in line]
            raise ToolFailure(f"No replacement was performed. Multiple occurrences of old_str `{old_str}` in lines "
                              f"{lines}. Please ensure it is unique")
        if new_str == old_str:
            raise ToolFailure("No replacement was performed. `new_str` and `old_str` must be different.")
        self.history[path].append(text)
        new_text = text.replace(old_str, new_str)
        self._write(path, new_text)
        line = text.split(old_str)[0].count("\n")
        snippet, first = self._snippet(new_text, line, new_str.count("\n"))
        return (f"The file {path} has been edited. Here's the result of running `cat -n` on a snippet of {path}:\n"
                f"{_numbered(snippet, first)}\nReview the changes and make sure they are as expected. Edit the "
                "file again if necessary.")

    def insert(self, path: str, insert_line: int, new_str: str) -> str:
        text = self._read(path, whole=True).expandtabs()
        lines = text.split("\n")
        if insert_line < 0 or insert_line > len(lines):
            raise ToolFailure(f"Invalid `insert_line` parameter: {insert_line}. It should be within the range of "
                              f"lines of the file: {[0, len(lines)]}")
        new_lines = new_str.expandtabs().split("\n")
        self.history[path].append(text)
        self._write(path, "\n".join(lines[:insert_line] + new_lines + lines[insert_line:]))
        snippet_lines = (lines[max(0, insert_line - SNIPPET_LINES) : insert_line] + new_lines
                         + lines[insert_line : insert_line + SNIPPET_LINES])
        return (f"The file {path} has been edited. Here's the result of running `cat -n` on a snippet of the "
                f"edited file:\n{_numbered(chr(10).join(snippet_lines), max(1, insert_line - SNIPPET_LINES + 1))}\n"
                "Review the changes and make sure they are as expected (correct indentation, no duplicate lines, "
                "etc). Edit the file again if necessary.")

    def undo_edit(self, path: str) -> str:
        if not self.history.get(path):
            raise ToolFailure(f"No edit history found for {path}.")
        previous = self.history[path].pop()
        self._write(path, previous)
        return f"Last edit to {path} undone successfully. Here's the result of running `cat -n` on {path}:\n" \
               f"{_numbered(previous)}\n"


def submit_diff(box: DockerSandbox, workdir: str, base_commit: str | None = None) -> str:
    """The agent's changes as a git diff (new files included) against `base_commit` (default HEAD)."""
    ref = shlex.quote(base_commit) if base_commit else "HEAD"
    code, out = box.exec(f"git add -A && git diff --cached {ref}", user="root", workdir=workdir,
                         max_output_bytes=1_000_000)
    return out if code == 0 else f"[submit: git diff failed (exit {code})]\n{out}"


def opencode_tool(box: DockerSandbox, editor: StrReplaceEditor, name: str, args: dict[str, Any],
                  user: str | None = None) -> tuple[str, int]:
    """OpenCode's read / write / edit / grep / glob / todowrite on the sandbox (bash is run by the caller)."""
    path = args.get("filePath") or args.get("path") or "."
    if name == "read":
        try:
            text = editor._read(path) if editor._exists(path) == "file" else None
        except ToolFailure as failure:
            return str(failure), 1
        if text is None:
            return f"File not found: {path}", 1
        lines = text.split("\n")
        offset, limit = int(args.get("offset") or 0), int(args.get("limit") or 2000)
        return "\n".join(f"{i + 1:05d}| {line}" for i, line in enumerate(lines) if offset <= i < offset + limit), 0
    if name == "write":
        editor._write(path, str(args.get("content", "")))
        return f"Wrote {path}", 0
    if name == "edit":
        try:
            text = editor._read(path, whole=True) if editor._exists(path) == "file" else None
        except ToolFailure as failure:
            return str(failure), 1
        old, new = str(args.get("oldString", "")), str(args.get("newString", ""))
        if text is None:
            return f"File not found: {path}", 1
        count = text.count(old)
        if count == 0 or (count > 1 and not args.get("replaceAll")):
            return ("oldString not found in content" if count == 0 else
                    "oldString found multiple times and requires more code context to uniquely identify the "
                    "intended match"), 1
        editor._write(path, text.replace(old, new) if args.get("replaceAll") else text.replace(old, new, 1))
        return f"Edited {path}", 0
    if name == "grep":
        cmd = ["grep", "-rn", "-E", str(args.get("pattern", "")), path]
        if args.get("include"):
            cmd.insert(2, f"--include={args['include']}")
        return box.exec(cmd, user=user)
    if name == "glob":
        return box.exec(["bash", "-c", 'shopt -s globstar nullglob; cd "$1" && ls -1td -- $2', "glob", path,
                         str(args.get("pattern", "*"))], user=user)
    if name == "todowrite":
        return f"Todo list updated ({len(args.get('todos') or [])} items)", 0
    return f"Tool {name!r} is not available in this environment.", 1
