"""str_replace_editor with SWE-agent's messages, and submit's diff."""

from __future__ import annotations

import pytest

from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig
from north_lightning.envs.swe_tools import StrReplaceEditor, submit_diff

pytestmark = pytest.mark.docker

SOURCE = "def f(x):\n    return x + 1\n\n\ndef g(x):\n    return x + 1\n"


@pytest.fixture
def editor(base_image):
    with DockerSandbox(SandboxConfig(image=base_image, workdir="/repo", user="root")) as box:
        box.exec("mkdir -p /repo && cd /repo && git init -q && git config user.email a@b && git config user.name a",
                 workdir="/")
        box.put_files({"/repo/m.py": SOURCE})
        box.exec("git add -A && git commit -qm base")
        yield StrReplaceEditor(box)


def test_view_file_and_range(editor):
    out = editor(command="view", path="/repo/m.py")
    assert out.startswith("Here's the result of running `cat -n` on /repo/m.py:\n     1\tdef f(x):\n")
    assert editor(command="view", path="/repo/m.py", view_range=[2, 2]) == \
        "Here's the result of running `cat -n` on /repo/m.py:\n     2\t    return x + 1\n"
    assert "Invalid `view_range`" in editor(command="view", path="/repo/m.py", view_range=[9, 10])


def test_view_directory(editor):
    out = editor(command="view", path="/repo")
    assert out.startswith("Here's the files and directories up to 2 levels deep in /repo, excluding hidden items:\n")
    assert "/repo/m.py" in out and ".git" not in out


def test_path_errors(editor):
    assert editor(command="view", path="repo/m.py") == (
        "The path repo/m.py is not an absolute path, it should start with `/`. Maybe you meant /repo/m.py?")
    assert editor(command="view", path="/repo/none.py") == (
        "The path /repo/none.py does not exist. Please provide a valid path.")
    assert editor(command="create", path="/repo/m.py", file_text="x") == (
        "File already exists at: /repo/m.py. Cannot overwrite files using command `create`.")
    assert editor(command="str_replace", path="/repo", old_str="a", new_str="b") == (
        "The path /repo is a directory and only the `view` command can be used on directories")
    assert editor(command="fly", path="/repo/m.py").startswith("Unrecognized command fly.")


def test_str_replace_messages_and_undo(editor):
    assert editor(command="str_replace", path="/repo/m.py", old_str="return y", new_str="z") == (
        "No replacement was performed, old_str `return y` did not appear verbatim in /repo/m.py.")
    assert editor(command="str_replace", path="/repo/m.py", old_str="return x + 1", new_str="z") == (
        "No replacement was performed. Multiple occurrences of old_str `return x + 1` in lines [2, 6]. "
        "Please ensure it is unique")
    out = editor(command="str_replace", path="/repo/m.py", old_str="def g(x):\n    return x + 1",
                 new_str="def g(x):\n    return x + 2")
    assert out.startswith("The file /repo/m.py has been edited. Here's the result of running `cat -n` on a "
                          "snippet of /repo/m.py:\n")
    assert "     6\t    return x + 2" in out and out.endswith("Edit the file again if necessary.")
    assert editor.box.get_file("/repo/m.py").decode().endswith("return x + 2\n")
    assert editor(command="undo_edit", path="/repo/m.py").startswith("Last edit to /repo/m.py undone successfully.")
    assert editor.box.get_file("/repo/m.py").decode() == SOURCE
    assert editor(command="undo_edit", path="/repo/m.py") == "No edit history found for /repo/m.py."


def test_insert_create_and_required_parameters(editor):
    out = editor(command="insert", path="/repo/m.py", insert_line=0, new_str="import os")
    assert out.startswith("The file /repo/m.py has been edited.") and "     1\timport os" in out
    assert editor(command="insert", path="/repo/m.py", insert_line=99, new_str="x") == (
        "Invalid `insert_line` parameter: 99. It should be within the range of lines of the file: [0, 8]")
    assert editor(command="insert", path="/repo/m.py", new_str="x") == (
        "Parameter `insert_line` is required for command: insert")
    assert editor(command="create", path="/repo/pkg/new.py", file_text="X = 1\n") == (
        "File created successfully at: /repo/pkg/new.py")
    assert editor(command="create", path="/repo/other.py") == "Parameter `file_text` is required for command: create"


def test_submit_returns_the_diff_with_new_files(editor):
    editor(command="str_replace", path="/repo/m.py", old_str="def f(x):\n    return x + 1",
           new_str="def f(x):\n    return x - 1")
    editor(command="create", path="/repo/new.txt", file_text="hello\n")
    diff = submit_diff(editor.box, "/repo")
    assert "-    return x + 1\n+    return x - 1" in diff and "+++ b/new.txt" in diff
