"""Log parsers: on real pytest and unittest logs (produced here by running the runners) and on Go / Jest logs,
our parsers decide every test as the `swebench` package's parsers do; and the resolution rule."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from north_lightning.envs.log_parsers import parse_log, resolve

# `swebench` (PyPI 5.0.2) is a dev dependency (pyproject [dev]): a missing one must fail, not skip.
from swebench.harness.log_parsers import PARSER_REGISTRY

UPPER = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR", "skipped": "SKIPPED", "xfailed": "XFAIL"}


def theirs(name: str, log: str) -> dict[str, str]:
    return PARSER_REGISTRY[name](log, None)


def ours_as_theirs(log: str, parser: str) -> dict[str, str]:
    """Our statuses in swebench's words; `xpassed` has no swebench status (its parser drops the line)."""
    return {t: UPPER[s] for t, s in parse_log(log, parser).items() if s != "xpassed"}


PYTEST_SUITE = '''
import pytest

def test_ok():
    assert 1

def test_fails():
    assert 1 == 2, "one - is not - two"

@pytest.fixture
def broken():
    raise RuntimeError("fixture - broke")

def test_errors(broken):
    pass

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert 0

@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    assert 1

@pytest.mark.parametrize("value", ["a", "b/c", "with space", "x - y"])
def test_param(value):
    assert value != "b/c"

class TestGroup:
    def test_method(self):
        print("PASSED is printed by a test but starts no summary line")

    def test_other(self):
        pytest.skip("runtime skip")
'''


def _run(cmd: list[str], cwd) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def test_pytest_logs_agree_with_swebench(tmp_path):
    (tmp_path / "test_suite.py").write_text(PYTEST_SUITE)
    log = _run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "test_suite.py"], tmp_path)
    ours = parse_log(log, "pytest")
    assert ours["test_suite.py::test_ok"] == "passed" and ours["test_suite.py::test_fails"] == "failed"
    assert ours["test_suite.py::test_errors"] == "error" and ours["test_suite.py::test_xfail"] == "xfailed"
    assert ours["test_suite.py::test_xpass"] == "xpassed" and ours["test_suite.py::test_param[b/c]"] == "failed"
    assert ours["test_suite.py::TestGroup::test_method"] == "passed"
    assert "[1]" not in ours  # the "SKIPPED [1] file:line" count names no test
    # a captured print starting with a status word reads as a test, in swebench as in ours (no "- Captured" guard)
    assert ours["is"] == "passed"
    assert ours_as_theirs(log, "pytest") == theirs("parse_log_pytest", log)
    # the per-repository variants SWE-bench uses, on the same log and on one with colour codes and paths
    coloured = log + "\nPASSED test_suite.py::test_p[/tmp/a/b.txt]\nFAILED \x1b[31mtest_suite.py::test_q\x1b[0m - boom\n"
    for ours_name, their_name in (("pytest-v2", "parse_log_pytest_v2"), ("pytest-options", "parse_log_pytest_options")):
        for text in (log, coloured):
            assert ours_as_theirs(text, ours_name) == theirs(their_name, text), ours_name
    assert parse_log(coloured, "pytest-options")["test_suite.py::test_p[/b.txt]"] == "passed"
    assert parse_log(coloured, "pytest-v2")["test_suite.py::test_q"] == "failed"
    # ids with a space are cut at the space, as in the datasets' FAIL_TO_PASS lists
    assert "test_suite.py::test_param[with" in ours


UNITTEST_SUITE = '''
import sys
import unittest

class Things(unittest.TestCase):
    def test_ok(self):
        pass

    def test_fail(self):
        self.assertEqual(1, 2)

    def test_error(self):
        raise KeyError("nope")

    @unittest.skip("not today")
    def test_skip(self):
        pass

    def test_noisy(self):
        sys.stderr.write("some output\\n")

    @unittest.expectedFailure
    def test_expected_failure(self):
        self.assertTrue(False)

class More(unittest.TestCase):
    def test_ok(self):
        """A docstring the runner prints on the second line."""
'''


def test_unittest_and_django_style_logs_agree_with_swebench(tmp_path):
    (tmp_path / "test_things.py").write_text(UNITTEST_SUITE)
    log = _run([sys.executable, "-m", "unittest", "-v", "test_things"], tmp_path)
    ours = parse_log(log, "django")
    assert ours["test_ok (test_things.Things.test_ok)"] == "passed"
    assert ours["test_fail (test_things.Things.test_fail)"] == "failed"
    assert ours["test_error (test_things.Things.test_error)"] == "error"
    assert ours["test_skip (test_things.Things.test_skip)"] == "skipped"
    assert ours["test_noisy (test_things.Things.test_noisy)"] == "passed"
    assert ours_as_theirs(log, "django") == theirs("parse_log_django", log)
    # Django's runner prints the same lines; a captured excerpt of Django 3.0's runtests.py --verbosity 2
    django_log = textwrap.dedent("""\
        test_ascii_validator (auth_tests.test_validators.UsernameValidatorsTests) ... ok
        test_unicode_validator (auth_tests.test_validators.UsernameValidatorsTests) ... FAIL
        test_help_text (auth_tests.test_validators.UserAttributeSimilarityValidatorTest) ... skipped 'no db'
        test_migrate (migrations.test_commands.MigrateTests) ... System check identified no issues (0 silenced)
        ok
        test_errors (admin_views.tests.AdminViewBasicTest) ... ERROR
        ======================================================================
        FAIL: test_unicode_validator (auth_tests.test_validators.UsernameValidatorsTests)
        """)
    assert ours_as_theirs(django_log, "django") == theirs("parse_log_django", django_log)
    assert parse_log(django_log, "django")["test_migrate (migrations.test_commands.MigrateTests)"] == "passed"


GO_LOG = """=== RUN   TestDiff
--- PASS: TestDiff (0.00s)
=== RUN   TestSplit
=== RUN   TestSplit/empty
=== RUN   TestSplit/two_lines
    split_test.go:31: got 1 lines, want 2
--- FAIL: TestSplit (0.00s)
    --- PASS: TestSplit/empty (0.00s)
    --- FAIL: TestSplit/two_lines (0.00s)
=== RUN   TestSkipped
    x_test.go:9: needs a network
--- SKIP: TestSkipped (0.00s)
FAIL
FAIL\tgithub.com/pmezard/go-difflib/difflib\t0.004s
"""

JEST_LOG = """ PASS  src/sum.test.js
  sum
    ✓ adds 1 + 2 to equal 3 (2 ms)
    ✕ handles negatives (1 ms)
    ○ skipped pending case
  ✓ top level test
"""


SYMPY_LOG = """============================= test process starts ==============================
executable:         /opt/miniconda3/envs/testbed/bin/python  (3.9.19-final-0) [CPython]
sympy/core/tests/test_basic.py[3]
test__aresame ok
test_structure F
test_equality E
________________________________________________________________________________
_______________ sympy/core/tests/test_basic.py:test_structure ________________
Traceback (most recent call last):
AssertionError
"""


def test_sympy_log_agrees_with_swebench():
    assert parse_log(SYMPY_LOG, "sympy")["test__aresame"] == "passed"
    assert ours_as_theirs(SYMPY_LOG, "sympy") == theirs("parse_log_sympy", SYMPY_LOG)


def test_go_and_jest_logs_agree_with_swebench():
    assert parse_log(GO_LOG, "go") == {"TestDiff": "passed", "TestSplit": "failed", "TestSplit/empty": "passed",
                                      "TestSplit/two_lines": "failed", "TestSkipped": "skipped"}
    assert ours_as_theirs(GO_LOG, "go") == theirs("parse_log_gotest", GO_LOG)
    assert parse_log(JEST_LOG, "jest")["adds 1 + 2 to equal 3"] == "passed"
    assert ours_as_theirs(JEST_LOG, "jest") == theirs("parse_log_jest", JEST_LOG)


def test_resolution_rule():
    statuses = {"a": "passed", "b": "xfailed", "c": "skipped", "d": "failed", "e": "error"}
    assert resolve(statuses, ["a", "b"], ["c"]) == (True, {"a": "passed", "b": "xfailed", "c": "skipped"})
    assert not resolve(statuses, ["c"], [])[0]  # a skipped FAIL_TO_PASS test proves nothing
    assert not resolve(statuses, ["a"], ["d"])[0] and not resolve(statuses, ["a"], ["e"])[0]
    assert resolve(statuses, ["zz"], [])[1] == {"zz": "missing"} and not resolve(statuses, ["zz"], [])[0]
    assert resolve(statuses, [], [], {"a": "PASSED", "d": "FAILED"})[0]
    assert not resolve(statuses, [], [], {"a": "PASSED", "d": "PASSED"})[0]
    with pytest.raises(ValueError, match="no log parser 'nose'"):
        parse_log("", "nose")
