"""Toy task generator: seeded, disjoint splits, every family, Harbor-format output."""

from __future__ import annotations

import json

import pytest

from north_lightning.envs.tasks import load_tasks
from north_lightning.envs.toy_tasks import FAMILIES, generate_toy_tasks, make_toy_task, split_of


def test_seeded_and_distinct():
    a = generate_toy_tasks(40, seed=3)
    assert [t.task_id for t in a] == [t.task_id for t in generate_toy_tasks(40, seed=3)]
    assert [t.task_id for t in a] != [t.task_id for t in generate_toy_tasks(40, seed=4)]
    assert len({t.task_id for t in a}) == 40
    assert {t.family for t in a} == set(FAMILIES)


def test_heldout_split_is_disjoint_from_train_whatever_the_seed():
    train = {t.task_id for s in range(3) for t in generate_toy_tasks(60, seed=s, split="train")}
    heldout = generate_toy_tasks(30, seed=0, split="heldout")
    assert {t.task_id for t in heldout}.isdisjoint(train)
    assert all(split_of(t.family, t.params) == "heldout" and t.split == "heldout" for t in heldout)


def test_materialised_dirs_load_as_harbor_tasks(tmp_path):
    tasks = generate_toy_tasks(8, seed=1)
    for task in tasks:
        task.materialize(tmp_path)
    loaded = {t.task_id: t for t in load_tasks(tmp_path)}
    assert set(loaded) == {t.task_id for t in tasks}
    for task in tasks:
        harbor = loaded[task.task_id]
        assert harbor.instruction == task.instruction and harbor.max_steps == task.max_steps
        assert harbor.metadata["family"] == task.family
        assert make_toy_task(task.family, json.loads(harbor.metadata["params_json"])) == task
        assert (harbor.path / "environment" / "Dockerfile").read_text().startswith("FROM python:3.11-slim-bookworm")
        solve = (harbor.path / "solution" / "solve.sh").read_text()
        assert all(cmd in solve for cmd in task.oracle)


def test_instructions_are_short():
    assert max(len(t.instruction) for t in generate_toy_tasks(100, seed=0)) < 120


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        generate_toy_tasks(1, split="test")
    with pytest.raises(ValueError, match="unknown toy task family"):
        generate_toy_tasks(1, families=("nope",))


def test_tasks_toy_and_list_cli(tmp_path, capsys):
    from north_lightning.cli.tasks import main

    assert main(["toy", str(tmp_path), "--n", "5", "--seed", "2", "--split", "heldout"]) == 0
    assert "wrote 5 heldout toy tasks" in capsys.readouterr().out
    assert main(["list", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("toy-") and "\tterminal\t" in line for line in lines)


def test_family_subsets_in_the_rl_env_spec_and_the_cli(tmp_path, capsys):
    from north_lightning.cli.tasks import main
    from north_lightning.rl.env_specs import EnvSpec, load_env_tasks

    tasks = load_env_tasks(EnvSpec("t", "toy:train:6:0:arith,text_transform"), tmp_path / "w")
    assert len(tasks) == 6 and {t.task_id.split("-")[1] for t in tasks} == {"arith", "text"}
    # all families when none are named; a different root, so the two sets never mix
    assert {t.task_id.split("-")[1] for t in load_env_tasks(EnvSpec("t", "toy:train:8:0"), tmp_path / "w")} == \
        {"write", "arith", "text", "python"}
    with pytest.raises(ValueError, match="unknown toy task family 'nope'"):
        load_env_tasks(EnvSpec("t", "toy:train:2:0:nope"), tmp_path / "w")
    with pytest.raises(ValueError, match=r"toy:<split>:<n>\[:<seed>\[:<families>\]\]"):
        load_env_tasks(EnvSpec("t", "toy:train:2:0:arith:extra"), tmp_path / "w")
    assert main(["toy", str(tmp_path / "cli"), "--n", "3", "--split", "heldout", "--families", "write_file"]) == 0
    assert "wrote 3 heldout toy tasks (write_file)" in capsys.readouterr().out
    assert {p.name.split("-")[1] for p in (tmp_path / "cli").iterdir()} == {"write"}
