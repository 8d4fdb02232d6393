"""Grading as the benchmark grades, on a real library instance (inflection 0.5.1 and its own pytest suite):
gold patch -> 1, no patch -> 0, a plausible wrong patch -> 0, a patch that breaks a PASS_TO_PASS test -> 0;
and through a TaskSession, whatever the agent does to its own container outside its diff does not count."""

from __future__ import annotations

import pytest

from real_instances import go_difflib_instance, idna_instance, inflection_instance
from north_lightning.envs.session import TaskSession, task_image
from north_lightning.envs.log_parsers import parse_log
from north_lightning.envs.swe_grader import grade_in_fresh_container
from north_lightning.envs.verifier import verify_swe

pytestmark = [pytest.mark.docker, pytest.mark.slow]  # real containers; the Go image build takes ~2 min once


@pytest.fixture(scope="module")
def inflection(tmp_path_factory, base_image):
    instance = inflection_instance(tmp_path_factory.mktemp("inflection"))
    return instance, task_image(instance.task)


def test_real_pytest_instance_gold_none_wrong_breaking(inflection):
    instance, image = inflection
    task = instance.task
    assert len(task.fail_to_pass) == 3 and len(task.pass_to_pass) > 300  # derived from real runs
    assert "test_inflection.py::test_underscore_acronym_before_word" in task.fail_to_pass
    gold = grade_in_fresh_container(task, instance.gold, image)
    assert (gold.reward, gold.reason) == (1.0, "passed"), gold.output
    assert all(gold.tests[t] == "passed" for t in task.fail_to_pass + task.pass_to_pass)
    none = grade_in_fresh_container(task, "", image)
    assert (none.reward, none.reason) == (0.0, "tests_failed")
    assert all(none.tests[t] == "failed" for t in task.fail_to_pass)
    assert all(none.tests[t] == "passed" for t in task.pass_to_pass)
    wrong = grade_in_fresh_container(task, instance.wrong, image)
    assert (wrong.reward, wrong.reason) == (0.0, "tests_failed")
    assert wrong.tests["test_inflection.py::test_underscore_acronym_before_word"] == "passed"
    assert sorted(t for t in task.fail_to_pass if wrong.tests[t] == "failed") == [
        "test_inflection.py::test_underscore[HTMLTidy-html_tidy]",
        "test_inflection.py::test_underscore[HTMLTidyGenerator-html_tidy_generator]"]
    breaking = grade_in_fresh_container(task, instance.breaking, image)
    assert (breaking.reward, breaking.reason) == (0.0, "tests_failed")
    assert all(breaking.tests[t] == "passed" for t in task.fail_to_pass)
    broken = sorted(t for t in task.pass_to_pass if breaking.tests[t] != "passed")
    assert broken == ["test_inflection.py::test_dasherize[person_street_address-person-street-address]"], broken
    garbage = grade_in_fresh_container(task, "diff --git a/nope b/nope\n--- a/nope\n+++ b/nope\n@@ -1 +1 @@\n-x\n+y\n",
                                       image)
    assert (garbage.reward, garbage.reason) == (0.0, "patch_failed")


def test_session_grades_the_agents_diff_not_its_container(inflection):
    instance, _ = inflection
    with TaskSession(instance.task) as session:
        # the agent fixes the bug with its editor tools ... and also plants a pytest that reports success
        session.box.put_files({"/tmp/fix.patch": instance.gold})
        assert session.box.exec("git apply /tmp/fix.patch && rm /tmp/fix.patch", user="root")[0] == 0
        assert session.verify().reward == 1.0
        # then undoes the fix and replaces pytest by a script printing a PASSED line for every graded test
        ids = "\n".join(instance.task.fail_to_pass + instance.task.pass_to_pass)
        session.box.put_files({"/tmp/ids": ids, "/usr/lib/python3/dist-packages/pytest/__main__.py":
                               "print(''.join('PASSED ' + t + '\\n' for t in open('/tmp/ids').read().split('\\n')))\n"})
        assert session.box.exec("git reset -q --hard", user="root")[0] == 0
        assert verify_swe(session.box, instance.task).reward == 1.0  # grading in place would be fooled
        cheated = session.verify()
        assert (cheated.reward, cheated.reason) == (0.0, "tests_failed"), cheated.output[-3000:]


@pytest.fixture(scope="module")
def go_difflib(tmp_path_factory, base_image):
    from north_lightning.envs.session import image_builder

    return go_difflib_instance(tmp_path_factory.mktemp("go_difflib"), image_builder())


# the first run builds an image with Debian's golang-go (cached by content afterwards)
def test_real_go_instance_gold_none_wrong_breaking(go_difflib):
    from swebench.harness.log_parsers import PARSER_REGISTRY

    task = go_difflib.task
    gold = grade_in_fresh_container(task, go_difflib.gold, task.image)
    assert (gold.reward, gold.reason) == (1.0, "passed"), gold.output
    assert all(gold.tests[t] == "passed" for t in task.fail_to_pass + task.pass_to_pass)
    # conformance on this real `go test -v` log too
    upper = {"passed": "PASSED", "failed": "FAILED", "skipped": "SKIPPED"}
    assert {t: upper[s] for t, s in parse_log(gold.output, "go").items()} == \
        PARSER_REGISTRY["parse_log_gotest"](gold.output, None)
    none = grade_in_fresh_container(task, "", task.image)
    assert (none.reward, none.reason) == (0.0, "tests_failed")
    assert all(none.tests[t] == "failed" for t in task.fail_to_pass), none.tests
    assert all(none.tests[t] == "passed" for t in task.pass_to_pass), [
        t for t in task.pass_to_pass if none.tests[t] != "passed"]
    wrong = grade_in_fresh_container(task, go_difflib.wrong, task.image)
    assert (wrong.reward, wrong.reason) == (0.0, "tests_failed")
    assert wrong.tests["TestEmptyRangeBeginsBeforeIt"] == "passed"
    assert wrong.tests["TestOutputFormatRangeFormatUnified"] == "failed"  # fm(0, 0) gives "1,0"
    assert all(wrong.tests[t] == "passed" for t in task.pass_to_pass)
    breaking = grade_in_fresh_container(task, go_difflib.breaking, task.image)
    assert (breaking.reward, breaking.reason) == (0.0, "tests_failed")
    assert all(breaking.tests[t] == "passed" for t in task.fail_to_pass)
    assert sorted(t for t in task.pass_to_pass if breaking.tests[t] != "passed") == ["TestSFBugsRatioForNullSeqn"]


def test_real_unittest_instance_gold_none_wrong_breaking(tmp_path, base_image):
    instance = idna_instance(tmp_path)
    task = instance.task
    image = task_image(task)
    assert "test_range_start (tests.test_intranges.IntrangeContainsTests.test_range_start)" in task.fail_to_pass
    assert len(task.pass_to_pass) > 5
    results = {name: grade_in_fresh_container(task, diff, image) for name, diff in
               (("gold", instance.gold), ("none", ""), ("wrong", instance.wrong), ("breaking", instance.breaking))}
    assert {n: (r.reward, r.reason) for n, r in results.items()} == {
        "gold": (1.0, "passed"), "none": (0.0, "tests_failed"), "wrong": (0.0, "tests_failed"),
        "breaking": (0.0, "tests_failed")}, results["gold"].output
    assert all(results["none"].tests[t] in ("failed", "error") for t in task.fail_to_pass)
    assert all(results["breaking"].tests[t] == "passed" for t in task.fail_to_pass)
    assert [t for t in task.pass_to_pass if results["breaking"].tests[t] != "passed"] == [
        "test_empty (tests.test_intranges.IntrangeContainsTests.test_empty)",
        "test_empty_range (tests.test_intranges.IntrangeTests.test_empty_range)"]


def test_tests_that_hang_score_zero_not_an_infra_error(inflection):
    from north_lightning.envs.swe_grader import INFRA_REASONS
    from real_instances import diff_of, replace_in

    instance, image = inflection
    work = instance.task.repo_dir.parent.parent / "work" / "inflection"
    hang = diff_of(work, lambda r: replace_in(r / "inflection" / "__init__.py", "import re\n",
                                              "import re\nimport time\ntime.sleep(600)\n"))
    result = grade_in_fresh_container(instance.task, hang, image, timeout=8)
    assert (result.reward, result.reason) == (0.0, "verifier_timeout") and result.reason not in INFRA_REASONS


def test_swe_smith_shaped_instance_imports_and_grades(inflection, tmp_path):
    """A SWE-smith-style row (bug patch, instance branch in a mirror repository inside the image) made from the
    inflection instance: the importer reverses the bug patch into the fix, the grader checks out the branch."""
    import json
    import shutil

    from real_instances import git
    from north_lightning.envs.session import image_builder
    from north_lightning.envs.swe_pool import import_pool
    from north_lightning.envs.tasks import load_swe_jsonl

    instance, _ = inflection
    iid = "jpvanhal__inflection.1fd52536.func_pm_remove_assign__acr0"
    mirror = tmp_path / "mirror"
    shutil.copytree(instance.task.repo_dir.parent.parent / "work" / "inflection", mirror)
    for patch in (instance.task.test_patch, instance.gold):  # the mirror's main branch: the library as released
        git(mirror, "apply", "-", stdin=patch)
    git(mirror, "commit", "-qam", "clean")
    git(mirror, "checkout", "-qb", iid)
    git(mirror, "apply", "-R", "-", stdin=instance.gold)  # SWE-smith's instance branch carries the bug
    git(mirror, "commit", "-qam", "bug")
    bug = git(mirror, "diff", "HEAD~1", "HEAD")
    git(mirror, "checkout", "-q", "-")
    image = image_builder().build(mirror, name="swesmith-inflection", dockerfile_text=(
        "FROM north-lightning/base:latest\nCOPY . /testbed/\nWORKDIR /testbed\n"
        "RUN git config --system --add safe.directory '*'\n"))
    row = {"instance_id": iid, "repo": "swesmith/jpvanhal__inflection.1fd52536", "patch": bug,
           "FAIL_TO_PASS": instance.task.fail_to_pass, "PASS_TO_PASS": instance.task.pass_to_pass,
           "image_name": image, "problem_statement": "underscore() no longer splits HTMLTidy"}
    (tmp_path / "smith.jsonl").write_text(json.dumps(row) + "\n")
    assert import_pool("swe-smith", tmp_path / "smith.jsonl", tmp_path / "pool.jsonl").imported == 1
    (task,) = load_swe_jsonl(tmp_path / "pool.jsonl")
    assert task.repo == "jpvanhal/inflection" and task.setup_cmd == f"git checkout -q {iid}"
    gold = grade_in_fresh_container(task, task.patch, image)
    assert (gold.reward, gold.reason) == (1.0, "passed"), gold.output
    none = grade_in_fresh_container(task, "", image)
    assert (none.reward, none.reason) == (0.0, "tests_failed")
    with TaskSession(task) as session:  # the agent starts on the instance branch too
        assert session.box.exec("git rev-parse --abbrev-ref HEAD", user="root").output.strip() == iid
