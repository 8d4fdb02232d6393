"""A trajectory saved by mini-swe-agent 2.4.6 itself (its DefaultAgent with the text-mode config, its
deterministic test model and its LocalEnvironment running the commands) imports and round-trips: the import
reads what upstream writes, not only our hand-written samples of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from north_lightning.datamodules.importers import import_trajectories
from north_lightning.formats.harnesses import get_harness
from north_lightning.formats.records import iter_records

COMMANDS = ["printf 'a - b\\n' > calc.txt && cat calc.txt",
            "sed -i 's/ - / + /' calc.txt && cat calc.txt",
            "echo 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT'\ncat calc.txt"]


@pytest.mark.parametrize("mode", ["text", "toolcall"])
def test_import_a_trajectory_saved_by_mini_swe_agent(tmp_path, mode):
    os.environ["MSWEA_SILENT_STARTUP"] = "1"
    os.environ["MSWEA_GLOBAL_CONFIG_DIR"] = str(tmp_path / "mswea")
    import minisweagent
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments.local import LocalEnvironment
    from minisweagent.models import test_models

    name = "mini_textbased.yaml" if mode == "text" else "mini.yaml"
    config = yaml.safe_load((Path(minisweagent.__file__).parent / "config" / name).read_text())
    agent_config = {k: v for k, v in config["agent"].items() if k in ("system_template", "instance_template")}
    if mode == "text":
        outputs = [test_models.make_output(f"THOUGHT: step {i}.\n\n```mswea_bash_command\n{c}\n```", [{"command": c}])
                   for i, c in enumerate(COMMANDS)]
        model = test_models.DeterministicModel(outputs=outputs)
    else:  # v2's default mode: native tool calls of its `bash` tool
        outputs = [test_models.make_toolcall_output(
            f"step {i}", [{"id": f"call_{i}", "type": "function",
                           "function": {"name": "bash", "arguments": json.dumps({"command": c})}}],
            [{"command": c, "tool_call_id": f"call_{i}"}]) for i, c in enumerate(COMMANDS)]
        model = test_models.DeterministicToolcallModel(outputs=outputs)
    (tmp_path / "work").mkdir()
    agent = DefaultAgent(model, LocalEnvironment(cwd=str(tmp_path / "work")), **agent_config)
    result = agent.run("add() in calc.py subtracts instead of adding.")
    assert result["exit_status"] == "Submitted" and result["submission"] == "a + b\n"
    saved = tmp_path / "runs" / "calc__add-1.traj.json"
    agent.save(saved)

    report = import_trajectories("mini-swe-agent", tmp_path / "runs", tmp_path / "out")
    assert (report.kept, report.total) == (1, 1), report.to_dict()
    ((record, _),) = list(iter_records(sorted((tmp_path / "out").glob("*.parquet"))))
    assert record.harness == "mini_swe_agent_v2" and record.task == "add() in calc.py subtracts instead of adding."
    assert json.loads(saved.read_text())["info"]["mini_version"] == "2.4.6"
    assert [o.output for s in record.steps for o in s.observations][:2] == ["a - b\n", "a + b\n"]
    harness = get_harness("mini_swe_agent_v2")
    parsed = [harness.parse(m["content"]).tool_calls[0].arguments["command"]
              for m in harness.render(record) if m["role"] == "assistant"]
    assert parsed == COMMANDS
    last = record.steps[-1]
    assert harness.submission(last.calls[0], last.observations[0].output, last.observations[0].exit_code) == "a + b\n"
