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
import re
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


GO_LIBRARY = "golang-github-pmezard-go-difflib-dev"  # Debian's package of github.com/pmezard/go-difflib (BSD-3)
GO_DOCKERFILE = """FROM north-lightning/base:latest
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends golang-go \\
    && rm -rf /var/lib/apt/lists/*
ENV GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
COPY . /testbed/
WORKDIR /testbed
RUN {env} GIT_CONFIG_GLOBAL=/dev/null bash -c '{commit}' && git config --system --add safe.directory '*'
RUN go test ./... > /dev/null 2>&1; git status --short  # warm the build cache: graders recompile one package
"""


def debian_package_sources(package: str, dest: Path) -> Path:
    """Unpack a Debian package (fetched with `apt-get download`, cached) into `dest`."""
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(SDIST_CACHE.glob(f"{package}_*.deb"))
    if not debs:
        if subprocess.run(["apt-get", "download", "-q", package], cwd=SDIST_CACHE, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)  # a fresh machine
            subprocess.run(["apt-get", "download", "-q", package], cwd=SDIST_CACHE, check=True, capture_output=True)
        debs = sorted(SDIST_CACHE.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True)
    return dest


def go_difflib_instance(root: Path, builder) -> RealInstance:
    """go-difflib 1.0.0 from Debian, graded with `go test -v` (Debian's golang-go in the image, no network):
    `formatRangeUnified` forgets that an empty range begins at the line before it ("3,0" becomes "4,0")."""
    from north_lightning.envs.tasks import GIT_COMMIT_SCRIPT, GIT_ENV as IMAGE_GIT_ENV

    unpacked = debian_package_sources(GO_LIBRARY, root / "deb")
    repo = root / "work" / "go-difflib"
    shutil.copytree(unpacked / "usr/share/gocode/src/github.com/pmezard/go-difflib", repo)
    (repo / "go.mod").write_text("module github.com/pmezard/go-difflib\n\ngo 1.19\n")
    source = repo / "difflib" / "difflib.go"
    empty_rule = "\tif length == 0 {\n\t\tbeginning -= 1 // empty ranges begin at line just before the range\n\t}\n"
    tail = '\treturn fmt.Sprintf("%d,%d", beginning, length)\n'  # formatRangeContext has the same rule
    replace_in(source, empty_rule + tail, tail)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    fix = lambda r: replace_in(r / "difflib" / "difflib.go", tail, empty_rule + tail)
    gold = diff_of(repo, fix)
    test_patch = diff_of(repo, lambda r: (r / "difflib" / "range_test.go").write_text(
        "package difflib\n\nimport \"testing\"\n\nfunc TestEmptyRangeBeginsBeforeIt(t *testing.T) {\n"
        "\tif got := formatRangeUnified(5, 5); got != \"5,0\" {\n\t\tt.Fatalf(\"got %q, want 5,0\", got)\n\t}\n}\n"))
    # guards only the start of the file: "3,0" is right again, the empty range at the start ("0,0") is not
    wrong = diff_of(repo, lambda r: replace_in(r / "difflib" / "difflib.go", tail, empty_rule.replace(
        "length == 0", "length == 0 && start > 0") + tail))
    breaking = diff_of(repo, lambda r: (fix(r), replace_in(r / "difflib" / "difflib.go",
                                                           "\treturn 1.0\n}", "\treturn 0.0\n}")))
    task_repo = root / "repos" / "pmezard__go-difflib"
    shutil.copytree(repo, task_repo, ignore=shutil.ignore_patterns(".git"))
    env = " ".join(f"{k}={json.dumps(v)}" for k, v in IMAGE_GIT_ENV.items())
    image = builder.build(task_repo, name="swe-go-difflib", dockerfile_text=GO_DOCKERFILE.format(
        env=env, commit=GIT_COMMIT_SCRIPT), extra_files={".dockerignore": "Dockerfile\n.dockerignore\n"})
    tests = re.findall(r"^func (Test\w+)\(", (repo / "difflib" / "difflib_test.go").read_text(), re.MULTILINE)
    # the new test, the range-format test, and the one that diffs against an empty file
    f2p = ["TestOutputFormatRangeFormatUnified", "TestOmitFilenames", "TestEmptyRangeBeginsBeforeIt"]
    record = {"instance_id": "pmezard__go-difflib-empty-range", "repo": "pmezard/go-difflib",
              "base_commit": repo_commit(task_repo), "patch": gold, "test_patch": test_patch,
              "problem_statement": "formatRangeUnified(3, 3) returns \"4,0\": an empty range must begin at the "
                                   "line before it (\"3,0\"), as the diff spec says",
              "FAIL_TO_PASS": f2p, "PASS_TO_PASS": sorted(set(tests) - set(f2p)), "version": "1.0.0",
              "image": image, "log_parser": "go", "test_cmd": "go test -v ./... 2>&1"}
    (root / "tasks.jsonl").write_text(json.dumps(record) + "\n")
    (task,) = load_swe_jsonl(root / "tasks.jsonl")
    return RealInstance(task, gold, wrong, breaking)


def idna_instance(root: Path) -> RealInstance:
    """idna 3.10 (kjd/idna, BSD-3), graded by `python -m unittest -v` and the unittest/Django log parser:
    `intranges_contain` loses its check for a code point that starts a range."""
    repo = root / "work" / "idna"
    with tarfile.open(sdist("idna", "3.10")) as tar:
        tar.extractall(root / "src", filter="data")
    src = root / "src" / "idna-3.10"
    repo.mkdir(parents=True)
    for name in ("idna", "tests", "LICENSE.md", "pyproject.toml"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, repo / name)
    module = repo / "idna" / "intranges.py"
    start_check = ("    # or we could be immediately behind a tuple (int_, end)\n    if pos < len(ranges):\n"
                   "        left, _ = _decode_range(ranges[pos])\n        if left == int_:\n            return True\n")
    replace_in(module, start_check, "")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    tail = "    return False\n"
    fix = lambda r: replace_in(r / "idna" / "intranges.py", tail, start_check + tail)
    gold = diff_of(repo, fix)
    test_patch = diff_of(repo, lambda r: replace_in(
        r / "tests" / "test_intranges.py", "    def test_simple(self):\n",
        "    def test_range_start(self):\n        self.assertTrue(intranges_contain(10, intranges_from_list([10, 11])))\n"
        "\n    def test_simple(self):\n"))
    # an off-by-one: looks behind the next range but only for code points after its start
    wrong = diff_of(repo, lambda r: replace_in(r / "idna" / "intranges.py", tail, start_check.replace(
        "left, _ = _decode_range(ranges[pos])\n        if left == int_:",
        "left, right = _decode_range(ranges[pos])\n        if left < int_ < right:") + tail))
    breaking = diff_of(repo, lambda r: (fix(r), replace_in(r / "idna" / "intranges.py", "    return tuple(ranges)\n",
                                                           "    return tuple(ranges) or (0,)\n")))
    cmd = [sys.executable, "-m", "unittest", "-v", "tests.test_intranges", "tests.test_idna"]
    before = _host_statuses(repo, [test_patch], cmd, "unittest")
    after = _host_statuses(repo, [test_patch, gold], cmd, "unittest")
    task_repo = root / "repos" / "kjd__idna"
    shutil.copytree(repo, task_repo, ignore=shutil.ignore_patterns(".git"))
    record = {"instance_id": "kjd__idna-range-start", "repo": "kjd/idna", "base_commit": repo_commit(task_repo),
              "patch": gold, "test_patch": test_patch,
              "problem_statement": "intranges_contain(10, intranges_from_list([10, 11])) is False: a code point "
                                   "that starts a range is reported absent",
              "FAIL_TO_PASS": sorted(t for t, s in after.items() if s == "passed" and before.get(t) != "passed"),
              "PASS_TO_PASS": sorted(t for t, s in after.items() if s == "passed" and before.get(t) == "passed"),
              "version": "3.10", "log_parser": "unittest",
              "test_cmd": "python -m unittest -v tests.test_intranges tests.test_idna 2>&1"}
    (root / "tasks.jsonl").write_text(json.dumps(record) + "\n")
    (task,) = load_swe_jsonl(root / "tasks.jsonl")
    return RealInstance(task, gold, wrong, breaking)
