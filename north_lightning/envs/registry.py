"""Instance images from a registry when one answers, from the pool's recipe otherwise; and a prefetcher.

SWE-bench-family pools name one prebuilt image per instance (e.g. `swebench/sweb.eval.x86_64.<id>:latest`).
`ImageResolver.resolve(reference, recipe)` returns a local tag to run:

1. the reference is already in the engine (pull policy `missing`, like Docker Compose's `pull_policy`): use it;
2. otherwise pull it, retrying transient failures (connection refused / reset, 5xx) with exponential backoff;
   a registry that answers "not found" (404) is not retried. The pulled repository digest is recorded;
3. otherwise build the recipe the pool carries (a Dockerfile + context on top of our local base, see
   `envs/images.py: ImageBuilder`);
4. neither: `ImageUnavailable`, an infrastructure failure of the environment (the RL loop must count it as
   `infra_error`, never as reward 0).

Every resolution is a `ResolvedImage` (source, digest, attempts, the errors on the way) that the caller logs;
with `record_path` the resolver also keeps them in a small JSON file (reference -> last resolution), written
atomically under a file lock so parallel rollout processes share it.

`ImagePrefetcher` warms the images of the tasks next in the dispatch order on a bounded thread pool, so the
pull or build overlaps with episodes of earlier tasks; errors are kept per image, never raised in the caller.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import docker
import docker.errors
from docker.utils import parse_repository_tag

from north_lightning.envs.images import ImageBuildError, ImageBuilder, _client, image_exists

PULL_POLICIES = ("missing", "always", "never")


class ImageUnavailable(ImageBuildError):
    """No registry served the image and no recipe builds it (or the recipe failed): an infrastructure failure,
    never a reward. The message lists every attempt's error."""


@dataclass(frozen=True)
class PullRetry:
    """How often and how patiently a pull is retried: attempt k (0-based) waits
    `min(base_delay_sec * factor**k, max_delay_sec)` before attempt k+1."""

    attempts: int = 4
    base_delay_sec: float = 1.0
    factor: float = 2.0
    max_delay_sec: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"PullRetry.attempts must be >= 1, got {self.attempts}")
        if self.base_delay_sec < 0 or self.factor < 1:
            raise ValueError(f"PullRetry: base_delay_sec >= 0 and factor >= 1 needed, got {self}")

    def delay(self, attempt: int) -> float:
        return min(self.base_delay_sec * self.factor ** attempt, self.max_delay_sec)


def resolver_settings(options: dict[str, Any] | None, where: str = "images") -> dict[str, Any]:
    """A config's `images:` mapping (`pull_policy`, `attempts`, `base_delay_sec`, `factor`, `max_delay_sec`) as
    `ImageResolver` keyword arguments; an unknown key or a bad value is named with `where`."""
    options = dict(options or {})
    known = {"pull_policy", *PullRetry.__dataclass_fields__}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    policy = options.pop("pull_policy", "missing")
    if policy not in PULL_POLICIES:
        raise ValueError(f"{where}.pull_policy must be one of {PULL_POLICIES}, got {policy!r}")
    try:
        retry = PullRetry(**options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err
    return {"retry": retry, "pull_policy": policy}


@dataclass(frozen=True)
class ImageRecipe:
    """How to build an image when no registry serves it: a context directory and its Dockerfile (the file
    `context_dir/Dockerfile`, or `dockerfile_text`), plus files added to the context."""

    context_dir: Path
    dockerfile_text: str | None = None
    extra_files: tuple[tuple[str, str], ...] = ()
    name: str = "task"


@dataclass
class ResolvedImage:
    """Where an image came from. `digest`: the registry's manifest digest (`sha256:...`) for a pulled image (or
    a local one that has a repository digest), else the local image id."""

    reference: str | None
    tag: str
    source: str  # "local" | "pulled" | "built"
    digest: str | None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _PullFailed(Exception):
    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def repository_digest(image: Any, reference: str) -> str | None:
    """The `sha256:...` manifest digest under which `reference`'s repository serves `image`, if any."""
    repository, _ = parse_repository_tag(reference)
    for entry in image.attrs.get("RepoDigests") or []:
        name, _, digest = entry.partition("@")
        if name == repository:
            return digest
    return None


def pull_with_retry(client: docker.DockerClient, reference: str, retry: PullRetry,
                    sleep: Callable[[float], None] = time.sleep) -> tuple[Any, int, list[str]]:
    """Pull `reference`; transient failures are retried per `retry`. Returns (image, attempts, errors of the
    failed attempts). Raises `_PullFailed` with every attempt's error when no attempt succeeded."""
    repository, tag = parse_repository_tag(reference)
    errors: list[str] = []
    for attempt in range(retry.attempts):
        try:
            if tag and tag.startswith("sha256:"):  # name@sha256:...
                image = client.images.pull(f"{repository}@{tag}")
            else:
                image = client.images.pull(repository, tag=tag or "latest")
            return image, attempt + 1, errors
        except docker.errors.APIError as err:
            if err.is_client_error():  # 404 the registry has no such image, 400 a malformed name: asking again won't help
                kind = "not found" if err.status_code == 404 else f"rejected ({err.status_code})"
                errors.append(f"attempt {attempt + 1}: {kind}: {err.explanation or err}")
                break
            errors.append(f"attempt {attempt + 1}: {type(err).__name__}: {err.explanation or err}")
            if attempt + 1 < retry.attempts:
                sleep(retry.delay(attempt))
        except (docker.errors.DockerException, OSError) as err:  # the engine itself did not answer
            detail = getattr(err, "explanation", None) or str(err)
            errors.append(f"attempt {attempt + 1}: {type(err).__name__}: {detail}")
            if attempt + 1 < retry.attempts:
                sleep(retry.delay(attempt))
    raise _PullFailed(errors)


class ImageRecord:
    """reference -> last `ResolvedImage` (as JSON, plus `resolved_at`), shared by processes via a lock file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.path}: cannot read the image record: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a JSON object of reference -> resolution")
        return data

    def add(self, result: ResolvedImage) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            data[result.reference or result.tag] = {
                **result.as_dict(), "resolved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)


class ImageResolver:
    """Registry first, recipe second, `ImageUnavailable` last (see the module docstring).

    `pull_policy`: `missing` (pull only when the engine lacks the reference), `always` (pull even then: picks up a
    moved tag; a failed pull of a present image still uses it), `never` (no registry: local image or recipe)."""

    def __init__(self, *, client: docker.DockerClient | None = None, builder: ImageBuilder | None = None,
                 retry: PullRetry | None = None, pull_policy: str = "missing", record_path: str | Path | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if pull_policy not in PULL_POLICIES:
            raise ValueError(f"pull_policy must be one of {PULL_POLICIES}, got {pull_policy!r}")
        self.client = _client(client if client is not None else getattr(builder, "client", None))
        self._builder = builder
        self.retry = retry or PullRetry()
        self.pull_policy = pull_policy
        self.record = ImageRecord(record_path) if record_path else None
        self.sleep = sleep
        self._lock = threading.Lock()

    @property
    def builder(self) -> ImageBuilder:
        with self._lock:
            if self._builder is None:
                self._builder = ImageBuilder(client=self.client)
            return self._builder

    def resolve(self, reference: str | None, recipe: ImageRecipe | None = None) -> ResolvedImage:
        """A local tag for `reference` (pulled or found) or, failing that, for `recipe` (built)."""
        if reference is None and recipe is None:
            raise ImageUnavailable("no image reference and no recipe: nothing to pull or build")
        started = time.monotonic()
        errors: list[str] = []
        attempts = 0
        result: ResolvedImage | None = None
        if reference is not None:
            try:
                present = image_exists(self.client, reference)
            except docker.errors.APIError:  # a malformed name: the pull below says why
                present = False
            if present and self.pull_policy != "always":
                result = self._local(reference)
            elif self.pull_policy != "never":
                try:
                    image, attempts, errors = pull_with_retry(self.client, reference, self.retry, self.sleep)
                    result = ResolvedImage(reference, reference, "pulled",
                                           repository_digest(image, reference) or image.id, attempts, errors)
                except _PullFailed as failed:
                    errors, attempts = list(failed.errors), len(failed.errors)
                    if present:  # `always` and the registry is away: the image we have still serves
                        result = self._local(reference, attempts=attempts, errors=errors)
            else:
                errors.append(f"{reference!r} is not in the engine and pull_policy='never'")
        if result is None and recipe is not None:
            try:
                tag = self.builder.build(recipe.context_dir, name=recipe.name, dockerfile_text=recipe.dockerfile_text,
                                         extra_files=dict(recipe.extra_files) or None)
            except (ImageBuildError, docker.errors.DockerException, OSError) as err:
                errors.append(f"recipe build of {recipe.context_dir}: {type(err).__name__}: {err}")
            else:
                result = ResolvedImage(reference, tag, "built", self.client.images.get(tag).id, attempts, errors)
        if result is None:
            what = f"image {reference!r}" if reference else f"recipe {recipe.context_dir}"  # type: ignore[union-attr]
            fallback = "" if recipe is not None else " and the task carries no recipe to build it from"
            raise ImageUnavailable(f"{what} is unavailable{fallback}:\n  " + "\n  ".join(errors or ["(no attempt)"]))
        result.seconds = round(time.monotonic() - started, 3)
        if self.record is not None:
            self.record.add(result)
        return result

    def _local(self, reference: str, attempts: int = 0, errors: list[str] | None = None) -> ResolvedImage:
        image = self.client.images.get(reference)
        return ResolvedImage(reference, reference, "local", repository_digest(image, reference) or image.id,
                             attempts, list(errors or []))


class ImagePrefetcher:
    """Warms images ahead of dispatch: `warm(tasks)` submits the first `window` not-yet-seen images of `tasks`
    (in order) to `max_workers` background threads, never more than `window` at once.

    `resolve(task)` makes the task's image ready (e.g. `envs.session.task_image`, which also memoises it for
    the episode); `key(task)` names the image so tasks sharing one are warmed once. Idempotent: a key is
    submitted once per prefetcher; its failure is kept in `errors` (the episode that needs the image resolves
    it again and reports the infrastructure failure itself)."""

    def __init__(self, resolve: Callable[[Any], Any], *, key: Callable[[Any], str] | None = None,
                 window: int = 4, max_workers: int = 2) -> None:
        if window < 1 or max_workers < 1:
            raise ValueError(f"ImagePrefetcher: window and max_workers must be >= 1, got {window}, {max_workers}")
        self.resolve, self.window = resolve, window
        self.key = key or (lambda task: str(task.task_id))
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="image-prefetch")
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._closed = False

    def warm(self, tasks: Iterable[Any]) -> list[str]:
        """Submit the upcoming tasks' images; returns the keys newly submitted."""
        submitted: list[str] = []
        with self._lock:
            if self._closed:
                return submitted
            pending = sum(not f.done() for f in self._futures.values())
            for i, task in enumerate(tasks):
                if i >= self.window or pending >= self.window:
                    break
                key = self.key(task)
                if key in self._futures:
                    continue
                self._futures[key] = self._pool.submit(self._run, key, task)
                submitted.append(key)
                pending += 1
        return submitted

    def _run(self, key: str, task: Any) -> None:
        try:
            result = self.resolve(task)
        except Exception as err:  # kept per image; the episode that needs it reports the failure
            with self._lock:
                self.errors[key] = f"{type(err).__name__}: {err}"
            return
        with self._lock:
            self.results[key] = result

    def wait(self, timeout: float | None = None) -> None:
        """Block until every submitted image is resolved (or failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            future.exception(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"submitted": len(self._futures), "ready": len(self.results), "failed": len(self.errors),
                    "pending": sum(not f.done() for f in self._futures.values())}

    def close(self) -> None:
        """Stop: queued images are dropped, running pulls/builds finish in the background."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
