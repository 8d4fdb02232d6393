"""SWE instances made from real libraries' sources and their own test suites (test helper, no tests here).

Each recipe takes a released source distribution from PyPI (downloaded once into a cache), introduces a
realistic bug, and derives the instance the way SWE-bench collects one: the gold patch is the fix, the test
patch adds a regression test, and FAIL_TO_PASS / PASS_TO_PASS come from running the library's suite before
and after the fix (on the host, with our own pytest log parser). The grader then sees a SWE-bench-shaped
record whose image holds the buggy repository committed at /testbed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from north_lightning.envs.log_parsers import parse_log
from north_lightning.envs.tasks import SWETask, load_swe_jsonl, repo_commit

SDIST_CACHE = Path(os.environ.get("NORTH_SDIST_CACHE", Path.home() / ".cache" / "north_lightning" / "sdists"))
GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def sdist(name: str, version: str) -> Path:
    """The released sdist from PyPI (the only registry tests may use), cached across runs."""
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    path = SDIST_CACHE / f"{name}-{version}.tar.gz"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"{name}=={version}", "-d", str(SDIST_CACHE)], check=True, capture_output=True)
    return path


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, input=stdin, capture_output=True, text=True, env=GIT_ENV)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def diff_of(repo: Path, edit) -> str:
    """The diff `edit(repo)` makes to the committed repository (the edit is undone afterwards)."""
    edit(repo)
    git(repo, "add", "-A")
    out = git(repo, "diff", "--cached")
    git(repo, "reset", "-q", "--hard")
    return out


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected one {old!r}"
    path.write_text(text.replace(old, new))


@dataclass
class RealInstance:
    task: SWETask
    gold: str
    wrong: str  # a plausible fix that does not fix everything
    breaking: str  # the fix plus a change that breaks a PASS_TO_PASS test


def _host_statuses(repo: Path, patches: list[str], test_cmd: list[str], parser: str) -> dict[str, str]:
    work = repo.parent / (repo.name + ".run")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(repo, work)
    for patch in patches:
        git(work, "apply", "-", stdin=patch)
    proc = subprocess.run(test_cmd, cwd=work, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    shutil.rmtree(work)
    return parse_log(proc.stdout + proc.stderr, parser)


def inflection_instance(root: Path) -> RealInstance:
    """inflection 0.5.1 (jpvanhal/inflection, MIT): `underscore` loses its acronym rule, so
    "HTMLTidy" -> "htmltidy"; its own parametrised tests catch it."""
    repo = root / "work" / "inflection"  # a git checkout for making diffs; the task's copy has no .git
    with tarfile.open(sdist("inflection", "0.5.1")) as tar:
        tar.extractall(root / "src", filter="data")
    src = root / "src" / "inflection-0.5.1"
    repo.mkdir(parents=True)
    for name in ("inflection", "test_inflection.py", "LICENSE", "setup.py", "setup.cfg"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, repo / name)
    module = repo / "inflection" / "__init__.py"
    acronym_rule = "    word = re.sub(r\"([A-Z]+)([A-Z][a-z])\", r'\\1_\\2', word)\n"
    replace_in(module, acronym_rule, "")  # the bug the instance starts from
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    fix = lambda r: replace_in(r / "inflection" / "__init__.py", '    """\n    word = re.sub(r"([a-z\\d])([A-Z])"',
                               '    """\n' + acronym_rule + '    word = re.sub(r"([a-z\\d])([A-Z])"')
    gold = diff_of(repo, fix)
    test_patch = diff_of(repo, lambda r: (r / "test_inflection.py").write_text(
        (r / "test_inflection.py").read_text()
        + "\n\ndef test_underscore_acronym_before_word():\n"
          "    assert inflection.underscore(\"HTTPServerError\") == \"http_server_error\"\n"))
    # an agent that special-cases the word of the issue: the new test passes, the suite's acronyms do not
    wrong = diff_of(repo, lambda r: replace_in(r / "inflection" / "__init__.py", '    """\n    word = re.sub(r"([a-z\\d])([A-Z])"',
                                               '    """\n    word = word.replace("HTTP", "Http")\n'
                                               '    word = re.sub(r"([a-z\\d])([A-Z])"'))
    breaking = diff_of(repo, lambda r: (fix(r), replace_in(r / "inflection" / "__init__.py",
                                                            "return word.replace('_', '-')",
                                                            "return word.replace('_', '-', 1)")))
    cmd = [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "test_inflection.py"]
    before = _host_statuses(repo, [test_patch], cmd, "pytest")
    after = _host_statuses(repo, [test_patch, gold], cmd, "pytest")
    f2p = sorted(t for t, s in after.items() if s == "passed" and before.get(t) != "passed")
    p2p = sorted(t for t, s in after.items() if s == "passed" and before.get(t) == "passed")
    task_repo = root / "repos" / "jpvanhal__inflection"
    shutil.copytree(repo, task_repo, ignore=shutil.ignore_patterns(".git"))
    record = {"instance_id": "jpvanhal__inflection-acronym", "repo": "jpvanhal/inflection",
              "base_commit": repo_commit(task_repo), "patch": gold, "test_patch": test_patch,
              "problem_statement": "underscore('HTMLTidy') gives 'htmltidy'; runs of capitals before a word are "
                                   "not split", "FAIL_TO_PASS": f2p, "PASS_TO_PASS": p2p, "version": "0.5.1"}
    (root / "tasks.jsonl").write_text(json.dumps(record) + "\n")
    (task,) = load_swe_jsonl(root / "tasks.jsonl")
    return RealInstance(task, gold, wrong, breaking)
