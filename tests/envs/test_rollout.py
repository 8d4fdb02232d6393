"""Agent loop with real Docker, real harness parsers and the real tiny tokenizer; the policy is scripted
(it emits known actions as token ids), a stand-in for a model, not a mock of the environment."""

from __future__ import annotations

import pytest

from north_lightning.formats.harnesses import AGENT_HARNESSES
from north_lightning.rl.scripted_policy import OraclePolicy, ScriptedPolicy, assistant_text
from north_lightning.rl.policy import Policy
from north_lightning.rl.rollout import Episode, RolloutConfig, run_episode

pytestmark = pytest.mark.docker

CFG = RolloutConfig(max_tokens_per_turn=1024)


def _task(tasks, task_id):
    return next(t for t in tasks if t.task_id == task_id)


def _check_segments(ep: Episode, tokenizer) -> None:
    assert ep.segments[0].trainable is False and ep.segments[0].logprobs is None
    assistant = [s for s in ep.segments if s.trainable]
    assert len(assistant) == ep.steps == len(ep.policy_versions)
    for seg in ep.segments:
        if seg.trainable:
            assert seg.logprobs is not None and len(seg.logprobs) == len(seg.token_ids)
            assert seg.token_ids[-1] == tokenizer.eos_token_id
        else:
            assert seg.logprobs is None
    assert ep.num_tokens == len(ep.token_ids)


@pytest.mark.slow
@pytest.mark.parametrize("harness", AGENT_HARNESSES)
def test_oracle_policy_solves_terminal_and_swe_tasks_in_every_harness(bundled_tasks, tokenizer, harness):
    tasks = [_task(bundled_tasks, "toy-python-fix-0ed80921"), _task(bundled_tasks, "north-lightning__slugkit-1")]
    policy = OraclePolicy(tokenizer, harness, tasks)
    assert isinstance(policy, Policy)
    for task in tasks:
        ep = run_episode(policy, harness, tokenizer, task, config=CFG, seed=1)
        assert (ep.reward, ep.end_reason) == (1.0, "submitted"), (harness, task.task_id, ep.messages[-3:])
        assert ep.verifier["passed"] is True
        _check_segments(ep, tokenizer)


def test_tokens_are_exactly_the_rendered_conversation(bundled_tasks, tokenizer):
    """Generated ids are kept as generated and observation ids are the template's: the whole sequence is
    what the chat template renders for the final conversation (a text harness, so no JSON re-spelling)."""
    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    ep = run_episode(OraclePolicy(tokenizer, "terminus2", [task]), "terminus2", tokenizer, task, config=CFG)
    assert ep.reward == 1.0 and ep.steps == 3  # command, task_complete, confirmed task_complete
    rendered = tokenizer.apply_chat_template(ep.messages, tokenize=False)
    assert ep.token_ids == tokenizer.encode(rendered, add_special_tokens=False)
    observation = [s for s in ep.segments[1:] if not s.trainable]
    assert "New Terminal Output" in tokenizer.decode(observation[0].token_ids)
    assert "Are you sure you want to mark the task as complete" in tokenizer.decode(observation[1].token_ids)


def test_unparseable_response_ends_with_reward_zero(bundled_tasks, tokenizer):
    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    ep = run_episode(ScriptedPolicy(tokenizer, ["I think the answer is 5.<|END_OF_TURN_TOKEN|>"]), "terminus2",
                     tokenizer, task, config=CFG)
    assert (ep.reward, ep.end_reason, ep.steps, ep.verifier) == (0.0, "format_error:bad_json", 1, None)
    assert ep.format_error == "bad_json"


def test_invalid_tool_call_ends_with_reward_zero(bundled_tasks, tokenizer):
    task = _task(bundled_tasks, "north-lightning__textstats-1")
    call = '<|START_ACTION|>[{"name": "launch_rocket", "arguments": {}}]<|END_ACTION|><|END_OF_TURN_TOKEN|>'
    ep = run_episode(ScriptedPolicy(tokenizer, [call]), "swe_agent", tokenizer, task, config=CFG)
    assert ep.reward == 0.0 and ep.end_reason.startswith("format_error:") and ep.verifier is None


def _bash_turn(tokenizer, harness_name, command):
    from north_lightning.formats.harnesses import get_harness
    from north_lightning.formats.records import Step, Trajectory
    from north_lightning.formats.harnesses.base import ToolCall

    harness = get_harness(harness_name, workdir="/app")
    messages = harness.render(Trajectory(id="x", task="t", source="s",
                                         steps=(Step(calls=(ToolCall("bash", {"command": command}),)),)))
    return assistant_text(tokenizer, [m for m in messages if m["role"] == "assistant"][0], harness.tools())


def test_step_budget_and_policy_versions(bundled_tasks, tokenizer):
    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    policy = ScriptedPolicy(tokenizer, [_bash_turn(tokenizer, "mini_swe_agent", "ls /app")])

    class Bumping:
        policy_version = 0

        def generate(self, prompts, **kw):
            self.policy_version += 1  # an export landed between two turns
            return policy.generate(prompts, **kw)

    ep = run_episode(Bumping(), "mini_swe_agent", tokenizer, task, config=RolloutConfig(max_steps=3))
    assert (ep.end_reason, ep.steps, ep.reward) == ("max_steps", 3, 0.0)
    assert ep.policy_versions == [1, 2, 3]
    assert ep.verifier["reason"] == "tests_failed"  # the verifier still judged the final state


def test_context_limit_and_truncated_response(bundled_tasks, tokenizer):
    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    turn = _bash_turn(tokenizer, "mini_swe_agent", "seq 1 50")
    policy = ScriptedPolicy(tokenizer, [turn])
    prompt_len = run_episode(policy, "mini_swe_agent", tokenizer, task,
                             config=RolloutConfig(max_steps=1)).segments[0].token_ids
    ep = run_episode(policy, "mini_swe_agent", tokenizer, task,
                     config=RolloutConfig(max_context=len(prompt_len) + 600, max_tokens_per_turn=200, max_steps=50))
    assert ep.end_reason == "context_limit" and ep.num_tokens <= len(prompt_len) + 600
    assert ep.verifier is not None
    ep = run_episode(policy, "mini_swe_agent", tokenizer, task, config=RolloutConfig(max_tokens_per_turn=5))
    assert (ep.end_reason, ep.reward, ep.steps) == ("truncated_response", 0.0, 1)
    assert len(ep.segments[1].token_ids) == 5


def test_turn_without_end_token_is_closed_untrainable(bundled_tasks, tokenizer):
    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    turn = _bash_turn(tokenizer, "mini_swe_agent", "ls").replace(tokenizer.eos_token, "")
    ep = run_episode(ScriptedPolicy(tokenizer, [turn]), "mini_swe_agent", tokenizer, task,
                     config=RolloutConfig(max_steps=1))
    assert ep.segments[1].trainable and ep.segments[1].token_ids[-1] != tokenizer.eos_token_id
    assert ep.segments[2][:3] == ([tokenizer.eos_token_id], None, False) and ep.segments[2].versions is None


def test_terminal_outputs_of_one_reply_are_merged_like_a_screen():
    from north_lightning.rl.rollout import merge_screens

    a = "agent@sandbox:/app# echo a\na\nagent@sandbox:/app# "
    b = "agent@sandbox:/app# echo b\nb\nagent@sandbox:/app# "
    assert merge_screens(a, b) == "agent@sandbox:/app# echo a\na\nagent@sandbox:/app# echo b\nb\nagent@sandbox:/app# "
    assert merge_screens("x\n", "y") == "x\ny" and merge_screens("", "y") == "y"


def test_terminus2_reply_with_two_commands_gets_one_screen(bundled_tasks, tokenizer):
    import json

    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    reply = json.dumps({"analysis": "", "plan": "", "task_complete": False, "commands": [
        {"keystrokes": "echo one\n", "duration": 5}, {"keystrokes": "echo two\n", "duration": 5}]})
    ep = run_episode(ScriptedPolicy(tokenizer, [reply + tokenizer.eos_token]), "terminus2", tokenizer, task,
                     config=RolloutConfig(max_steps=1))
    assert ep.messages[-1]["content"] == ("New Terminal Output:\n\nagent@sandbox:/app# echo one\none\n"
                                          "agent@sandbox:/app# echo two\ntwo\nagent@sandbox:/app# ")


class _KeptSession:
    """A real TaskSession whose last instance the test can read after the episode (its `submission`)."""

    last = None

    def __new__(cls, *args, **kwargs):
        from north_lightning.envs.session import TaskSession

        cls.last = TaskSession(*args, **kwargs)
        return cls.last


@pytest.mark.parametrize("harness", ["mini_swe_agent", "mini_swe_agent_v2"])
def test_mini_submission_runs_the_command_and_reads_its_output(bundled_tasks, tokenizer, harness):
    """As upstream: the submitting command is run, and its output's first line decides. The quoted marker
    (upstream's own tests send it so) submits; a suffixed one does not and the episode goes on."""
    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    suffixed = _bash_turn(tokenizer, harness, "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUTx")
    quoted = _bash_turn(tokenizer, harness, "echo 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT' && echo ran > /tmp/r && cat /tmp/r")
    ep = run_episode(ScriptedPolicy(tokenizer, [suffixed, quoted]), harness, tokenizer, task,
                     config=RolloutConfig(max_steps=4), session_factory=_KeptSession)
    assert (ep.end_reason, ep.steps) == ("submitted", 2)
    assert "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUTx" in ep.messages[-2]["content"]  # shown as a normal output
    assert _KeptSession.last.submission == "ran\n"  # the command ran; the rest of its output is the submission


def test_opencode_bash_workdir_runs_there(bundled_tasks, tokenizer):
    from north_lightning.formats.harnesses import ToolCall

    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    with _KeptSession(task) as session:
        out = session.execute(ToolCall("bash", {"command": "pwd", "workdir": "/tmp"}))
        missing = session.execute(ToolCall("bash", {"command": "pwd", "workdir": "/no/such dir"}))
    assert (out.output.strip(), out.exit_code) == ("/tmp", 0)
    assert missing.exit_code != 0 and "No such file or directory" in missing.output


def test_terminus2_warning_is_shown_with_the_next_output(bundled_tasks, tokenizer):
    """A reply that parses with warnings (here: no duration) runs, and Terminus-2's next observation starts with
    "Previous response had warnings" as upstream's does."""
    task = _task(bundled_tasks, "toy-arith-cbfa16cc")
    reply = '{"analysis": "look", "plan": "list", "commands": [{"keystrokes": "ls /app\\n"}]}'
    turn = assistant_text(tokenizer, {"role": "assistant", "content": reply}, None)
    ep = run_episode(ScriptedPolicy(tokenizer, [turn]), "terminus2", tokenizer, task, config=RolloutConfig(max_steps=1))
    observation = ep.messages[-1]["content"]
    assert observation.startswith("Previous response had warnings:\nWARNINGS: - Command 1: Missing duration field")
    assert "New Terminal Output:" in observation and "ls /app" in observation
