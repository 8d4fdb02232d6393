import subprocess


def git(*args):
    return subprocess.run(["git", "-C", "/app/repo", *args], capture_output=True, text=True, check=True).stdout


def test_last_commit_message():
    assert git("log", "-1", "--format=%s").strip() == "add notes"


def test_notes_committed_and_tree_clean():
    assert "notes.txt" in git("ls-files").split()
    assert git("status", "--porcelain").strip() == ""
