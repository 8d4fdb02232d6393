"""A fixed vote table: two blind systems, four prompts in two categories, two annotators.

Preferences are written from system `sys-a`'s point of view (1 = a much better ... 5 = b much better) and
turned into what each annotator actually clicked through their own left/right layout, so the report has to
undo the layout to get the hand-computed numbers in test_report.py back.
"""

from __future__ import annotations

from north_lightning.humaneval import db

RUBRICS = {"explain": "Is the explanation right and clear?", "edit": "Is the edit correct and minimal?"}
PROMPTS = {"p1": "explain", "p2": "explain", "p3": "edit", "p4": "edit"}
# (prompt, annotator) -> (preference from a's side, rating of a, rating of b)
TABLE = {
    ("p1", "ann1"): (1, 5, 2), ("p1", "ann2"): (2, 4, 3),
    ("p2", "ann1"): (3, 3, 3), ("p2", "ann2"): (3, 3, 4),
    ("p3", "ann1"): (2, 4, 2), ("p3", "ann2"): (2, 5, 1),
    ("p4", "ann1"): (5, 1, 5), ("p4", "ann2"): (4, 2, 4),
}
# a's answer is longer on p1, p2; b's on p3, p4. Passed tests: a on p1 and p4, b on p3.
PASSED = {("p1", "sys-a"): True, ("p4", "sys-a"): True, ("p3", "sys-b"): True, ("p4", "sys-b"): False}


def responses(systems: tuple[str, ...] = ("sys-a", "sys-b")) -> list[dict]:
    out = []
    for prompt, category in PROMPTS.items():
        for system in systems:
            longer = (system == "sys-a") == (prompt in ("p1", "p2"))
            out.append({"response_id": f"{prompt}-{system}", "prompt_id": prompt, "system": system,
                        "category": category, "prompt": f"prompt {prompt}", "task_id": f"task-{prompt}",
                        "passed": PASSED.get((prompt, system)),
                        "final_answer": ("x" * 200 if longer else "y" * 50), "diff": "", "turns": []})
    return out


def cast(conn, table: dict = TABLE) -> dict[str, int]:
    """Register the annotators and store every vote of `table`; returns {name: annotator id}."""
    db.load_responses(conn, responses(), RUBRICS)
    ids = {}
    for name in sorted({a for _, a in table}):
        token = db.add_annotator(conn, name)
        ids[name] = db.annotator_for_token(conn, token).annotator_id
    for (prompt, name), (pref_a, rating_a, rating_b) in table.items():
        item_id = db.item_id_for(prompt, "sys-a", "sys-b")
        left, _ = db.layout(conn, ids[name], item_id)
        a_left = left == f"{prompt}-sys-a"
        db.save_vote(conn, ids[name], item_id, preference=pref_a if a_left else 6 - pref_a,
                     rating_left=rating_a if a_left else rating_b, rating_right=rating_b if a_left else rating_a)
    return ids


def many_responses(n_prompts: int) -> list[dict]:
    """Two systems answering `n_prompts` prompts (one item each), with small trajectories to render."""
    out = []
    for i in range(n_prompts):
        for system in ("sys-a", "sys-b"):
            messages = [{"role": "system", "content": "You are opencode."}, {"role": "user", "content": f"task {i}"},
                        {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function",
                         "function": {"name": "bash", "arguments": '{"command": "ls", "description": "list"}'}}]},
                        {"role": "tool", "tool_call_id": "c0", "name": "bash",
                         "content": '{"output": "a.py", "metadata": {"exit": 0}}'},
                        {"role": "assistant", "content": f"answer of {system[-1]} to {i}"}]
            # the policy is untrusted: its text must reach the page escaped
            answer = f"answer of {system[-1]} to {i} <script>window.pwned = 1</script>"
            out.append({"response_id": f"q{i}-{system}", "prompt_id": f"q{i}", "system": system,
                        "category": "explain" if i % 2 else "edit", "prompt": f"task {i}", "task_id": None,
                        "passed": None, "final_answer": answer, "end_reason": "submitted",
                        "diff": "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n", "messages": messages})
    return out
