"""Task loading: Harbor directories and SWE-bench-style JSONL; bad files name the file and key."""

from __future__ import annotations

import json
import shutil

import pytest

from north_lightning.envs.tasks import BUNDLED_DIR, TaskError, load_harbor_task, load_swe_jsonl, load_tasks


def _record(**over):
    base = {"instance_id": "x-1", "repo": "org/x", "base_commit": "abc", "patch": "diff", "test_patch": "",
            "problem_statement": "fix it", "FAIL_TO_PASS": '["t.py::a"]', "PASS_TO_PASS": ["t.py::b"],
            "image": "some/image:1"}
    base.update(over)
    return base


def test_bundled_tasks_meet_the_counts():
    tasks = load_tasks(BUNDLED_DIR)
    assert sum(t.kind == "terminal" for t in tasks) >= 10
    assert sum(t.kind == "swe" for t in tasks) >= 3
    assert len({t.task_id for t in tasks}) == len(tasks)


def test_harbor_fields(tmp_path):
    src = BUNDLED_DIR / "terminal" / "count-log-errors"
    task = load_harbor_task(src)
    assert task.max_steps == 10 and task.user == "agent" and task.memory_mb == 512 and not task.allow_internet
    assert task.verifier_timeout_sec == 60.0 and task.solution_script is not None
    assert "ERROR" in task.instruction


@pytest.mark.parametrize("mutation, match", [
    (lambda d: (d / "task.toml").write_text("[agent]\nmax_steps = 'ten'\n"), r"task.toml: \[agent\].max_steps"),
    (lambda d: (d / "task.toml").write_text("[agent\n"), r"task.toml: invalid TOML"),
    (lambda d: (d / "tests" / "test.sh").unlink(), r"tests/test.sh: missing"),
    (lambda d: (d / "task.toml").write_text("[environment]\nmemory = 'lots'\n"), r"\[environment\].memory"),
])
def test_bad_harbor_dirs_name_file_and_key(tmp_path, mutation, match):
    task_dir = tmp_path / "t"
    shutil.copytree(BUNDLED_DIR / "terminal" / "csv-revenue", task_dir)
    mutation(task_dir)
    with pytest.raises(TaskError, match=match):
        load_harbor_task(task_dir)


def test_harbor_memory_string(tmp_path):
    task_dir = tmp_path / "t"
    shutil.copytree(BUNDLED_DIR / "terminal" / "csv-revenue", task_dir)
    (task_dir / "task.toml").write_text('[environment]\nmemory = "2G"\n')
    assert load_harbor_task(task_dir).memory_mb == 2048


def test_swe_jsonl_lists_as_strings_or_lists(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(_record()) + "\n\n" + json.dumps(_record(instance_id="x-2", FAIL_TO_PASS=["t.py::c"])))
    first, second = load_swe_jsonl(path)
    assert first.fail_to_pass == ["t.py::a"] and first.pass_to_pass == ["t.py::b"]
    assert second.fail_to_pass == ["t.py::c"] and second.test_files == ["t.py"]


@pytest.mark.parametrize("line, match", [
    ("{not json", r"tasks.jsonl:1: invalid JSON"),
    (json.dumps({k: v for k, v in _record().items() if k != "base_commit"}), r"tasks.jsonl:1: missing key 'base_commit'"),
    (json.dumps(_record(FAIL_TO_PASS="[oops")), r"tasks.jsonl:1: key 'FAIL_TO_PASS'"),
    (json.dumps(_record(PASS_TO_PASS=[1, 2])), r"tasks.jsonl:1: key 'PASS_TO_PASS'"),
    (json.dumps(_record(FAIL_TO_PASS=[])), r"'FAIL_TO_PASS' is empty"),
    (json.dumps(_record(image=None)), r"no key 'image' and no repository directory"),
])
def test_bad_swe_records_name_file_line_and_key(tmp_path, line, match):
    path = tmp_path / "tasks.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TaskError, match=match):
        load_swe_jsonl(path)


def test_duplicate_instance_ids_are_rejected(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record()) + "\n")
    with pytest.raises(TaskError, match=r"tasks.jsonl:2: duplicate instance_id"):
        load_swe_jsonl(path)


def test_response_message_extracts_native_calls_only_for_native_harnesses():
    from north_lightning.envs.response import response_message

    class Tok:
        eos_token = "<|END_OF_TURN_TOKEN|>"

    text = 'Fix it.<|START_ACTION|>[{"name": "bash", "arguments": {"command": "ls"}}]<|END_ACTION|><|END_OF_TURN_TOKEN|>'
    msg = response_message(text, Tok())
    assert msg["content"] == "Fix it." and msg["tool_calls"][0]["function"] == {"name": "bash",
                                                                                "arguments": {"command": "ls"}}
    assert response_message(text, Tok(), native_tools=False) == {"role": "assistant", "content": text[:-21]}
    broken = response_message("<|START_ACTION|>[{oops<|END_ACTION|>", Tok())
    assert broken["tool_calls"][0]["function"]["arguments"] == "[{oops"
    assert response_message("plain<|END_OF_TURN_TOKEN|>", Tok()) == {"role": "assistant", "content": "plain"}
