"""Docker images for task environments, built without any registry.

Every task image starts from one *base image*: a Debian rootfs made with `mmdebstrap` (python3, pytest, git,
tmux, coreutils, procps, bash) and loaded with `docker import`. Its tag is a content hash of the recipe, so a
changed recipe gives a new tag and an unchanged one is built exactly once per Docker engine.

Tasks written for Harbor / Terminal-Bench name public images (`FROM python:3.11-slim-bookworm`, `FROM
ubuntu:24.04`) that no registry serves here. `ALIASES` maps such names to the local base, and task images are
built from a rewritten copy of their Dockerfile, so third-party task directories run unchanged while the
user's own images of those names (if any) are never touched.

Every task image ends with `AGENT_LAYER`: the non-root `agent` account (when the image lacks one), the work
directory owned by it, and git's `safe.directory` so the grader (root) may run git in that agent-owned tree; so a
task runs its agent as non-root by default whatever image it starts from.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

BASE_REPOSITORY = "north-lightning/base"
TASK_REPOSITORY = "north-lightning/task"
IMAGE_LABEL = "north_lightning.image"
# Name a Dockerfile may use for our base directly (resolved like the public aliases).
BASE_ALIAS = "north-lightning/base:latest"


class ImageBuildError(RuntimeError):
    """An image could not be built (mmdebstrap or docker build failed); the message says where."""


@dataclass(frozen=True)
class BaseImageRecipe:
    """What goes into the base rootfs. Its JSON is hashed into the image tag."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    # `apt` = Essential:yes packages (bash, coreutils, ...) + apt, so task Dockerfiles may still apt-get
    # install when the build machine has a Debian mirror.
    variant: str = "apt"
    packages: tuple[str, ...] = (
        "python3", "python3-pytest", "python3-pip", "python-is-python3", "git", "tmux", "procps",
        "ca-certificates", "patch",
    )
    # Paths dpkg skips: documentation and translations only make the image bigger.
    exclude_paths: tuple[str, ...] = (
        "/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*",
    )
    # Non-root account tasks may run their agent as (`[environment] user = "agent"`).
    agent_user: str = "agent"
    agent_uid: int = 1000
    recipe_version: int = 1  # bump when the build procedure below changes

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.digest()}"


# Public base names -> the local base. Extend with `NORTH_IMAGE_ALIASES=/path/aliases.json` (a JSON object
# name -> local image, e.g. {"node:20-bookworm": "my-node-base:1"}) or the `aliases=` arguments below.
DEFAULT_ALIAS_NAMES: tuple[str, ...] = (
    "python:3.11-slim-bookworm", "python:3.11-slim", "python:3.11-bookworm", "python:3.11",
    "python:3.12-slim-bookworm", "python:3.12-slim", "python:3.12-bookworm", "python:3.12",
    "python:3.13-slim-bookworm", "python:3.13-slim", "python:3.13", "python:3-slim", "python:3",
    "debian:bookworm", "debian:bookworm-slim", "debian:12", "debian:12-slim", "debian:stable-slim",
    "debian:latest", "ubuntu:22.04", "ubuntu:24.04", "ubuntu:latest", "ubuntu",
    "buildpack-deps:bookworm", "ghcr.io/laude-institute/t-bench/python-3-13:20250620", BASE_ALIAS,
)


def alias_table(base_tag: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The public-name -> local-image table: defaults, then `$NORTH_IMAGE_ALIASES`, then `extra`."""
    table = {name: base_tag for name in DEFAULT_ALIAS_NAMES}
    path = os.environ.get("NORTH_IMAGE_ALIASES")
    if path:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"NORTH_IMAGE_ALIASES={path}: cannot read a JSON object: {err}") from err
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise ValueError(f"NORTH_IMAGE_ALIASES={path}: expected a JSON object of name -> image")
        table.update(loaded)
    table.update(extra or {})
    return table


def _client(client: docker.DockerClient | None) -> docker.DockerClient:
    if client is not None:
        return client
    try:
        return docker.from_env(timeout=600)
    except docker.errors.DockerException as err:
        raise RuntimeError(
            f"cannot reach a Docker engine ({err}); run `bash scripts/ensure_docker.sh` (or `make docker`)"
        ) from err


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


class _BuildLock:
    """A host-wide file lock so parallel test workers / rollout processes build an image once."""

    def __init__(self, name: str):
        self.path = Path(tempfile.gettempdir()) / f"north_lightning_{re.sub(r'[^a-zA-Z0-9_.-]', '_', name)}.lock"

    def __enter__(self) -> "_BuildLock":
        self._fh = open(self.path, "w")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def _mmdebstrap_command(recipe: BaseImageRecipe, out_tar: Path) -> list[str]:
    cmd = ["mmdebstrap", f"--variant={recipe.variant}", "--include=" + ",".join(recipe.packages)]
    for pattern in recipe.exclude_paths:
        cmd.append(f"--dpkgopt=path-exclude={pattern}")
    cmd.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")  # keep licences
    user = recipe.agent_user
    cmd += [
        # pip like in the python:* images (no PEP 668 refusal), a non-root account, a writable /app.
        '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        f'--customize-hook=chroot "$1" useradd --create-home --uid {recipe.agent_uid} --shell /bin/bash {user}',
        f'--customize-hook=mkdir -p "$1"/app "$1"/logs/verifier && chroot "$1" chown {user}:{user} /app',
        recipe.suite, str(out_tar), recipe.mirror,
    ]
    return cmd


def build_base_image(
    recipe: BaseImageRecipe | None = None, *, client: docker.DockerClient | None = None, force: bool = False,
    log: Any = None,
) -> str:
    """Build (or find) the base image and return its tag. Cached: skipped when the tag exists."""
    recipe = recipe or BaseImageRecipe()
    client = _client(client)
    tag = recipe.tag()
    with _BuildLock(tag):
        if not force and image_exists(client, tag):
            return tag
        if shutil.which("mmdebstrap") is None:
            raise RuntimeError("mmdebstrap is not installed; run `bash scripts/ensure_docker.sh` (installs it)")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="north_base_") as tmp:
            out_tar = Path(tmp) / "rootfs.tar"
            proc = subprocess.run(_mmdebstrap_command(recipe, out_tar), capture_output=True, text=True)
            if proc.returncode != 0:
                raise ImageBuildError(f"mmdebstrap failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            changes = [
                'CMD ["/bin/bash"]',
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                "ENV PYTHONDONTWRITEBYTECODE=1",
                f"LABEL {IMAGE_LABEL}=base north_lightning.recipe={recipe.digest()}",
            ]
            repository, version = tag.split(":")
            client.api.import_image_from_file(str(out_tar), repository=repository, tag=version, changes=changes)
        if log is not None:
            log(f"built base image {tag} in {time.monotonic() - started:.1f} s")
        return tag


_FROM_RE = re.compile(r"^(\s*FROM\s+)((?:--\S+\s+)*)(\S+)(.*)$", re.IGNORECASE)


def rewrite_from_lines(dockerfile: str, aliases: dict[str, str]) -> str:
    """Replace `FROM <public name>` by `FROM <local image>` for every aliased name. Build-stage names
    (`FROM x AS build` then `FROM build`) and unknown names are left alone."""
    out = []
    for line in dockerfile.splitlines():
        match = _FROM_RE.match(line)
        if match and match.group(3) in aliases:
            line = f"{match.group(1)}{match.group(2)}{aliases[match.group(3)]}{match.group(4)}"
        out.append(line)
    return "\n".join(out) + "\n"


def _context_tar(context_dir: Path, dockerfile_text: str, extra: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The build context as a tar (with the rewritten Dockerfile and `extra` files) and its content hash."""
    digest = hashlib.sha256(dockerfile_text.encode() + json.dumps(extra or {}, sort_keys=True).encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in context_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(context_dir).as_posix()
            if rel == "Dockerfile" or {"__pycache__", ".pytest_cache"} & set(path.parts) or path.suffix == ".pyc":
                continue
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data + oct(path.stat().st_mode & 0o777).encode())
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), path.stat().st_mode & 0o777, 0
            tar.addfile(info, io.BytesIO(data))
        for name, text in {**(extra or {}), "Dockerfile": dockerfile_text}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()[:16]


@dataclass
class ImageBuilder:
    """Builds task images from a Dockerfile + context directory on top of the local base (cached by content)."""

    client: docker.DockerClient | None = None
    recipe: BaseImageRecipe = field(default_factory=BaseImageRecipe)
    aliases: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.client = _client(self.client)
        self._base_tag: str | None = None

    @property
    def base_tag(self) -> str:
        if self._base_tag is None:
            self._base_tag = build_base_image(self.recipe, client=self.client)
        return self._base_tag

    def build(self, context_dir: str | Path, *, name: str = "task", dockerfile: str | Path | None = None,
              dockerfile_text: str | None = None, extra_files: dict[str, str] | None = None) -> str:
        """Build `context_dir` (Dockerfile at `dockerfile`, default `context_dir/Dockerfile`, or given as
        `dockerfile_text`; `extra_files` are added to the context, e.g. a .dockerignore); return the tag."""
        context_dir = Path(context_dir)
        dockerfile_path = Path(dockerfile) if dockerfile else context_dir / "Dockerfile"
        if dockerfile_text is None:
            if not dockerfile_path.is_file():
                raise FileNotFoundError(f"{dockerfile_path}: no Dockerfile for task {name!r}")
            dockerfile_text = dockerfile_path.read_text()
        text = rewrite_from_lines(dockerfile_text, alias_table(self.base_tag, self.aliases)) + AGENT_LAYER
        context, digest = _context_tar(context_dir, text, extra_files)
        # Tagged by content alone: tasks with identical environments (most toy tasks) share one image.
        tag = f"{TASK_REPOSITORY}:{digest}"
        with _BuildLock(tag):
            if image_exists(self.client, tag):
                return tag
            try:
                self.client.images.build(
                    fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True, forcerm=True,
                    labels={IMAGE_LABEL: "task", "north_lightning.first_task": name[:100]}, network_mode=None if _build_network() else "none",
                )
            except docker.errors.BuildError as err:
                log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in err.build_log)
                raise ImageBuildError(f"{dockerfile_path}: image build failed: {err.msg}\n{log[-3000:]}") from err
        return tag


AGENT_LAYER = (  # appended to every task Dockerfile (the last stage): see the module docstring
    "USER root\n"
    "RUN (id -u agent >/dev/null 2>&1 || useradd --create-home agent || adduser -D agent) \\\n"
    " && if command -v git >/dev/null; then git config --system --add safe.directory '*'; fi \\\n"
    " && if [ \"$(pwd)\" != / ]; then chown -R agent:agent \"$(pwd)\"; fi \\\n"
    # apt drops to its `_apt` user to fetch, which needs SETUID/SETGID, capabilities no sandbox keeps: without
    # this, a grader's `apt-get install` (common in Terminal-Bench tests.sh) dies with "Failed to setgroups".
    " && if [ -d /etc/apt/apt.conf.d ]; then echo 'APT::Sandbox::User \"root\";' > /etc/apt/apt.conf.d/99north-sandbox; fi\n"
)


def _build_network() -> bool:
    """Task image builds may reach the network (third-party Dockerfiles apt-get / pip install);
    NORTH_BUILD_NETWORK=0 makes them hermetic."""
    return os.environ.get("NORTH_BUILD_NETWORK", "1").lower() not in ("0", "false", "no")
