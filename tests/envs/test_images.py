"""Base image (mmdebstrap + docker import) and task images built through the public-name alias table."""

from __future__ import annotations

import json
import time

import pytest

from north_lightning.envs.images import (
    BaseImageRecipe,
    ImageBuildError,
    ImageBuilder,
    alias_table,
    rewrite_from_lines,
)
from north_lightning.envs.sandbox import DockerSandbox, SandboxConfig

pytestmark = pytest.mark.docker


def test_recipe_tag_is_a_content_hash():
    assert BaseImageRecipe().tag() == BaseImageRecipe().tag()
    assert BaseImageRecipe(packages=("python3",)).tag() != BaseImageRecipe().tag()


def test_rewrite_from_lines_maps_public_names_only():
    dockerfile = ("FROM python:3.11-slim-bookworm AS build\nRUN echo hi\nFROM --platform=linux/amd64 ubuntu:24.04\n"
                  "FROM build\nFROM node:20\n")
    out = rewrite_from_lines(dockerfile, {"python:3.11-slim-bookworm": "local:1", "ubuntu:24.04": "local:1"})
    assert out.splitlines() == ["FROM local:1 AS build", "RUN echo hi", "FROM --platform=linux/amd64 local:1",
                                "FROM build", "FROM node:20"]


def test_alias_table_extends_from_env_file(tmp_path, monkeypatch):
    extra = tmp_path / "aliases.json"
    extra.write_text(json.dumps({"node:20-bookworm": "my-node:1"}))
    monkeypatch.setenv("NORTH_IMAGE_ALIASES", str(extra))
    table = alias_table("base:x")
    assert table["node:20-bookworm"] == "my-node:1" and table["ubuntu:24.04"] == "base:x"
    extra.write_text("[1, 2]")
    with pytest.raises(ValueError, match="aliases.json"):
        alias_table("base:x")


def test_base_image_has_the_task_toolchain(base_image):
    with DockerSandbox(SandboxConfig(image=base_image, user="agent")) as box:
        code, out = box.exec("python --version && pytest --version && git --version && tmux -V && ps --version "
                             "&& id -un && test -w /app && echo ok")
        assert code == 0, out
        assert "Python 3.11" in out and "git version" in out and "tmux" in out
        assert out.strip().splitlines()[-2:] == ["agent", "ok"]


def test_task_image_from_public_name_is_cached(base_image, tmp_path):
    (tmp_path / "hello.txt").write_text("hi\n")
    (tmp_path / "Dockerfile").write_text("FROM python:3.12-slim\nWORKDIR /app\nCOPY hello.txt /app/hello.txt\n")
    builder = ImageBuilder()
    tag = builder.build(tmp_path, name="Alias Test")
    started = time.monotonic()
    assert builder.build(tmp_path, name="Alias Test") == tag
    assert time.monotonic() - started < 5
    with DockerSandbox(SandboxConfig(image=tag)) as box:
        assert box.exec("cat /app/hello.txt") == (0, "hi\n")
    (tmp_path / "hello.txt").write_text("changed\n")
    assert builder.build(tmp_path, name="Alias Test") != tag  # content changed -> new tag


def test_failed_build_names_the_dockerfile(base_image, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm\nRUN exit 3\n")
    with pytest.raises(ImageBuildError, match=str(tmp_path / "Dockerfile")):
        ImageBuilder().build(tmp_path, name="broken")


def test_third_party_task_runs_in_its_dockerfile_workdir(base_image, tmp_path):
    from north_lightning.envs.session import TaskSession
    from north_lightning.envs.tasks import load_harbor_task

    (tmp_path / "environment").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "environment" / "Dockerfile").write_text("FROM ubuntu:24.04\nWORKDIR /workspace\n")
    (tmp_path / "instruction.md").write_text("Do nothing.\n")
    (tmp_path / "task.toml").write_text('version = "1.0"\n[environment]\nmemory = "1G"\n')
    (tmp_path / "tests" / "test.sh").write_text("echo 1 > /logs/verifier/reward.txt\n")
    task = load_harbor_task(tmp_path)
    assert task.workdir is None and task.memory_mb == 1024 and task.user == "agent"  # no user: non-root
    with TaskSession(task) as session:
        assert task.workdir == "/workspace"
        assert session.box.exec("pwd; id -un; touch mine && stat -c %U mine") == (0, "/workspace\nagent\nagent\n")
        assert session.verify().reward == 1.0
