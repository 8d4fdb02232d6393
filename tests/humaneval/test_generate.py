"""`humaneval generate` on the tiny model: every checkpoint answers every prompt through OpenCode in a sandbox;
trajectories, diffs, test outcomes, tokens and time are stored; checkpoint names stay out of everything but
mapping.json; the database has one item per prompt and pair."""

from __future__ import annotations

import json

import pytest

from north_lightning.humaneval import db
from north_lightning.humaneval.generate import load_prompts, parse_model_specs

@pytest.mark.docker
@pytest.mark.vllm
@pytest.mark.slow
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
        assert rec["final_answer"] == "" or rec["end_reason"] == "submitted"  # no answer from a cut-short episode
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
    from north_lightning.humaneval.generate import BUNDLED_PROMPTS, GenerateConfig, run_generate

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "humaneval.db").write_text("")
    with pytest.raises(ValueError, match="already holds a generate run"):
        run_generate(GenerateConfig(models=specs, prompts=str(BUNDLED_PROMPTS), out=str(tmp_path / "out")))


@pytest.mark.docker
def test_diff_test_outcome_and_flagged_task_from_scripted_checkpoints(tmp_path, base_image_for_humaneval):
    """Scripted stand-ins for two checkpoints (the tiny model never calls a tool): the oracle fixes the bundled
    bug through OpenCode tools, the other gives up. The oracle's diff and passed tests are recorded; rated 1 by
    an annotator, its task lands in flagged_task_ids.txt."""
    from transformers import AutoTokenizer

    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.envs.tasks import BUNDLED_DIR, load_harbor_task
    from north_lightning.humaneval.generate import GenerateConfig, ModelSpec, run_generate
    from north_lightning.humaneval.report import build_report, write_report
    from north_lightning.rl.scripted_policy import OraclePolicy, ScriptedPolicy

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  - id: fix\n    category: edit\n    task: bundled:terminal/toy-python-fix-0ed80921\n")
    task = load_harbor_task(BUNDLED_DIR / "terminal" / "toy-python-fix-0ed80921")
    policies = {"oracle": (OraclePolicy(tokenizer, "opencode", [task]), tokenizer),
                "quitter": (ScriptedPolicy(tokenizer, ["I cannot do this.<|END_OF_TURN_TOKEN|>"]), tokenizer)}
    cfg = GenerateConfig(models=[ModelSpec("oracle", "scripted"), ModelSpec("quitter", "scripted-2")],
                         prompts=str(prompts), out=str(tmp_path / "out"), max_context=4096)
    summary = run_generate(cfg, policies=policies)
    assert summary["responses"] == 2 and summary["items"] == 1
    mapping = json.loads((tmp_path / "out" / "mapping.json").read_text())
    blind = {v["name"]: k for k, v in mapping.items()}
    records = {r["system"]: r for r in map(json.loads, (tmp_path / "out" / "responses.jsonl").read_text().splitlines())}
    oracle, quitter = records[blind["oracle"]], records[blind["quitter"]]
    assert oracle["passed"] is True and oracle["end_reason"] == "submitted"
    assert "-    return min(a, b)" in oracle["diff"] and "+    return max(a, b)" in oracle["diff"]
    assert oracle["diff"].startswith("diff --git a/mathutil.py b/mathutil.py")  # paths relative to the work dir
    assert any(m.get("tool_calls") for m in oracle["messages"]) and "passed" in oracle["test_log"]
    assert quitter["passed"] is False and quitter["diff"] == "" and quitter["final_answer"] == "I cannot do this."

    conn = db.connect(tmp_path / "out" / "humaneval.db")
    token = db.add_annotator(conn, "ann")
    me = db.annotator_for_token(conn, token).annotator_id
    (item_id,) = db.item_order(conn, me)
    left, _ = db.layout(conn, me, item_id)
    oracle_left = left == oracle["response_id"]
    db.save_vote(conn, me, item_id, rating_left=1 if oracle_left else 3, rating_right=3 if oracle_left else 1,
                 preference=3)
    paths = write_report(conn, tmp_path / "report", build_report(conn, n_boot=100))
    assert paths["flagged"].read_text().splitlines()[1:] == ["toy-python-fix-0ed80921"]
