"""Per-runner test-log parsers and the benchmark's resolution rule.

Each parser maps a test id to `passed | failed | error | skipped | xfailed | xpassed`, deciding exactly as the
`swebench` package (PyPI 5.0.2, `swebench/harness/log_parsers/`) decides for the runners both cover, because
the FAIL_TO_PASS / PASS_TO_PASS ids of SWE-bench-family datasets were produced by those parsers (a pytest id
is the first whitespace-separated token after the status word, as there). `tests/envs/test_log_parsers.py`
checks the agreement on real logs.

- `pytest`: `pytest -rA` short-summary lines (`PASSED id`, `FAILED id - message`); the `SKIPPED [N] file:line`
  summary form is not a test. `XPASS` is ours alone (swebench has no such status and drops the line).
  `pytest-v2` (whole id after the status word, colour codes dropped), `pytest-options` (path parameters cut
  to their last component) and `sympy` (SymPy's own runner) are the variants SWE-bench uses per repository.
- `django` / `unittest`: Django's runner at verbosity 2 and `python -m unittest -v` print the same
  `name (module.Class) ... ok|FAIL|ERROR|skipped` lines, with `FAIL: name` / `ERROR: name` blocks after.
- `go`: `go test -v` result lines `--- PASS|FAIL|SKIP: Name (0.00s)`, subtests indented and named `A/b`.
- `jest`: `jest --verbose` lines `✓ name (3 ms)`, `✕ name`, `○ name`.
- `r2e-pytest`: R2E-Gym names a pytest test `Class.test` (the id after the file, `::` -> `.`).

Resolution (swebench 5.0.2 `harness/grading.py`): a FAIL_TO_PASS test must pass (`passed` or `xfailed`); a
PASS_TO_PASS test must pass or be skipped (a skip is not a regression); a test absent from the log fails.
"""

from __future__ import annotations

import re
from typing import Callable

PASSING = ("passed", "xfailed")
_PYTEST_WORDS = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "xfailed",
                 "XPASS": "xpassed"}


def parse_pytest(log: str) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for line in log.split("\n"):
        if line.startswith("FAILED"):
            line = line.replace(" - ", " ")
        tokens = line.split()
        if len(tokens) < 2 or tokens[0] not in _PYTEST_WORDS:
            continue
        if tokens[0] == "SKIPPED" and re.fullmatch(r"\[\d+\]", tokens[1]):
            continue  # "SKIPPED [2] tests/t.py:10: reason" counts skips, it names no test
        statuses[tokens[1]] = _PYTEST_WORDS[tokens[0]]
    return statuses


def parse_pytest_v2(log: str) -> dict[str, str]:
    """Later pytest logs (astropy, scikit-learn, sphinx): colour codes and control characters removed, the id
    is everything after the status word (spaces included), and `id STATUS` lines of older pytest count too."""
    statuses: dict[str, str] = {}
    controls = str.maketrans("", "", "".join(chr(c) for c in range(1, 32)))
    for line in log.split("\n"):
        line = re.sub(r"\[(\d+)m", "", line).translate(controls)
        word = next((w for w in _PYTEST_WORDS if w != "XPASS" and line.startswith(w)), None)
        if word is not None:
            if word == "FAILED":
                line = line.split(" - ", 1)[0]
            tokens = line.split()
            if len(tokens) >= 2 and not (tokens[0] == "SKIPPED" and re.fullmatch(r"\[\d+\]", tokens[1])):
                statuses[" ".join(tokens[1:])] = _PYTEST_WORDS.get(tokens[0], "failed")
        elif any(line.endswith(w) for w in _PYTEST_WORDS if w != "XPASS"):
            tokens = line.split()
            if len(tokens) >= 2 and tokens[-1] in _PYTEST_WORDS:
                statuses[" ".join(tokens[:-1])] = _PYTEST_WORDS[tokens[-1]]
    return statuses


def parse_pytest_options(log: str) -> dict[str, str]:
    """pytest ids whose parameter is a path keep only its last component (requests, pylint, pydicom)."""
    statuses = {}
    for test, status in parse_pytest(log).items():
        match = re.match(r"(.*?)\[(.*)\]", test)
        if match:
            main, option = match.groups()
            if option.startswith("/") and not option.startswith("//") and "*" not in option:
                option = "/" + option.split("/")[-1]
            test = f"{main}[{option}]"
        statuses[test] = status
    return statuses


def parse_sympy(log: str) -> dict[str, str]:
    """SymPy's own runner: `test_name ok|F|E` lines and `____ file.py:test ____` failure headers."""
    statuses = {f"{m[1]}.py:{m[2]}": "failed" for m in re.findall(r"(_*) (.*)\.py:(.*) (_*)", log)}
    for raw in log.split("\n"):
        line = raw.strip()
        if line.startswith("test_"):
            for suffix, status in ((" E", "error"), (" F", "failed"), (" ok", "passed")):
                if line.endswith(suffix):
                    statuses[line.split()[0]] = status
    return statuses


def parse_unittest(log: str) -> dict[str, str]:
    """Django's runner (verbosity 2) and `unittest -v`."""
    statuses: dict[str, str] = {}
    previous: str | None = None
    for raw in log.split("\n"):
        line = raw.strip()
        if "--version is equivalent to version" in line:  # a Django test whose output spans lines
            statuses["--version is equivalent to version"] = "passed"
        if " ... " in line:
            previous = line.split(" ... ")[0]
        for suffix in (" ... ok", " ... OK", " ...  OK"):
            if line.endswith(suffix):
                name = line.rsplit(suffix, 1)[0]
                if name.startswith("Applying sites.0002_alter_domain_unique...test_no_migrations"):
                    name = line.split("...", 1)[-1].strip().rsplit(suffix, 1)[0]
                statuses[name] = "passed"
                break
        if " ... skipped" in line:
            statuses[line.split(" ... skipped")[0]] = "skipped"
        if line.endswith(" ... FAIL"):
            statuses[line.split(" ... FAIL")[0]] = "failed"
        if line.startswith("FAIL:"):
            statuses[line.split()[1].strip()] = "failed"
        if line.endswith(" ... ERROR"):
            statuses[line.split(" ... ERROR")[0]] = "error"
        if line.startswith("ERROR:"):
            statuses[line.split()[1].strip()] = "error"
        if line.startswith("ok") and previous is not None:  # output printed between "..." and "ok"
            statuses[previous] = "passed"
    # a long message can split "name ... ok" over two lines (seen in Django's own suite)
    for pattern in (r"^(.*?)\s\.\.\.\sTesting\ against\ Django\ installed\ in\ ((?s:.*?))\ silenced\)\.\nok$",
                    r"^(.*?)\s\.\.\.\sInternal\ Server\ Error:\ \/(.*)\/\nok$",
                    r"^(.*?)\s\.\.\.\sSystem check identified no issues \(0 silenced\)\nok$"):
        for match in re.finditer(pattern, log, re.MULTILINE):
            statuses[match.group(1)] = "passed"
    return statuses


_GO_LINE = re.compile(r"^--- (PASS|FAIL|SKIP): (.+) \((.+)\)$")
_GO_STATUS = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}


def parse_go_test(log: str) -> dict[str, str]:
    statuses = {}
    for line in log.split("\n"):
        match = _GO_LINE.match(line.strip())
        if match:
            statuses[match.group(2)] = _GO_STATUS[match.group(1)]
    return statuses


_JEST_LINE = re.compile(r"^\s*(✓|✕|○)\s(.+?)(?:\s\((\d+\s*m?s)\))?$")
_JEST_STATUS = {"✓": "passed", "✕": "failed", "○": "skipped"}


def parse_jest(log: str) -> dict[str, str]:
    statuses = {}
    for line in log.split("\n"):
        match = _JEST_LINE.match(line.strip())
        if match:
            statuses[match.group(2).strip()] = _JEST_STATUS[match.group(1)]
    return statuses


def parse_r2e_pytest(log: str) -> dict[str, str]:
    return {".".join(test.split("::")[1:]) or test: status for test, status in parse_pytest(log).items()}


PARSERS: dict[str, Callable[[str], dict[str, str]]] = {
    "pytest": parse_pytest, "pytest-v2": parse_pytest_v2, "pytest-options": parse_pytest_options,
    "sympy": parse_sympy, "django": parse_unittest, "unittest": parse_unittest, "go": parse_go_test,
    "jest": parse_jest, "r2e-pytest": parse_r2e_pytest,
}


def parse_log(log: str, parser: str) -> dict[str, str]:
    if parser not in PARSERS:
        raise ValueError(f"no log parser {parser!r} (have {', '.join(sorted(PARSERS))})")
    return PARSERS[parser](log)


def resolve(statuses: dict[str, str], fail_to_pass: list[str], pass_to_pass: list[str],
            expected_status: dict[str, str] | None = None) -> tuple[bool, dict[str, str]]:
    """(resolved, per-test outcome) under the benchmark's rule; outcomes of unlisted tests are not kept.
    With `expected_status` (R2E-Gym), every listed test must end in exactly its expected status."""
    if expected_status is not None:
        outcomes = {t: statuses.get(t, "missing") for t in expected_status}
        return all(outcomes[t] == s.lower() for t, s in expected_status.items()), outcomes
    outcomes = {t: statuses.get(t, "missing") for t in [*fail_to_pass, *pass_to_pass]}
    ok = (all(outcomes[t] in PASSING for t in fail_to_pass)
          and all(outcomes[t] in (*PASSING, "skipped") for t in pass_to_pass))
    return ok, outcomes
