"""`humaneval generate` on the tiny model: every checkpoint answers every prompt through OpenCode in a sandbox;
trajectories, diffs, test outcomes, tokens and time are stored; checkpoint names stay out of everything but
mapping.json; the database has one item per prompt and pair."""

from __future__ import annotations

import json

import pytest

from north_lightning.humaneval import db
from north_lightning.humaneval.generate import load_prompts, parse_model_specs

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]


def test_generate_stores_blind_full_trajectories(generated, tiny_export):
    out, summary = generated
    assert summary["responses"] == 8 and summary["items"] == 4
    mapping = json.loads((out / "mapping.json").read_text())
    assert sorted(v["name"] for v in mapping.values()) == ["rl", "sft"]
    assert all(k.startswith("sys-") and len(k) == 12 for k in mapping)
    text = (out / "responses.jsonl").read_text()
    assert '"sft"' not in text and '"rl"' not in text and str(tiny_export) not in text  # blind
    records = [json.loads(line) for line in text.splitlines()]
    assert {(r["prompt_id"], r["system"]) for r in records} == {(p, s) for p in
            ("explain-wordcount", "edit-maximum", "visualise-sales", "scratch-fizzbuzz") for s in mapping}
    for rec in records:
        assert rec["messages"][0]["role"] == "system" and rec["messages"][1]["content"] == rec["prompt"]
        assert rec["tokens"]["generated"] > 0 and rec["tokens"]["total"] > rec["tokens"]["prompt"] > 1000
        assert rec["seconds"] > 0 and rec["steps"] >= 1 and rec["end_reason"]
        assert isinstance(rec["diff"], str) and isinstance(rec["final_answer"], str)
    edit = [r for r in records if r["prompt_id"] == "edit-maximum"]
    assert all(r["task_id"] == "toy-python-fix-0ed80921" for r in edit)
    # scored by the task's tests; an episode cut short (format error) was not scored, so it failed them
    assert all(r["passed"] in (True, False) and r["test_log"] for r in edit)
    assert all(r["passed"] is None and r["task_id"] is None for r in records if r["prompt_id"] != "edit-maximum")
    conn = db.connect(out / "humaneval.db")
    assert db.count_items(conn) == 4
    assert {r[0] for r in conn.execute("SELECT category FROM items")} == {"explain", "edit", "visualise",
                                                                         "from-scratch"}


def test_prompt_and_model_errors_name_the_entry(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("prompts:\n  - id: a\n    category: poetry\n    prompt: hi\n")
    with pytest.raises(ValueError, match=r"prompts\[0\]: category 'poetry' is not one of"):
        load_prompts(path)
    path.write_text("rubrics: {poetry: 'Does it rhyme?'}\nprompts:\n  - id: a\n    category: poetry\n    prompt: hi\n"
                    "  - id: a\n    category: edit\n    prompt: again\n")
    with pytest.raises(ValueError, match=r"prompts\[1\]: 'id' must be a unique"):
        load_prompts(path)
    path.write_text("prompts:\n  - id: b\n    category: edit\n    task: nowhere\n")
    with pytest.raises(ValueError, match=r"prompts\[0\]: 'task' 'nowhere' is not a Harbor task"):
        load_prompts(path)
    with pytest.raises(ValueError, match="two or more checkpoints"):
        parse_model_specs(["a=http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="not an HF export directory"):
        parse_model_specs(["a=http://127.0.0.1:1", f"b={tmp_path}"])
    specs = parse_model_specs(["a=http://127.0.0.1:1/v1", "b=https://x"])
    assert [(s.name, s.is_url) for s in specs] == [("a", True), ("b", True)]
