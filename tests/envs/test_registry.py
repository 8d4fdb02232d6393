"""Instance images from a real local registry (Debian's `docker-registry`, on 127.0.0.1): pull + digest, a
registry that fails then recovers (retried with backoff), one down for good (the recipe is built), neither (the
named infrastructure error); and the prefetcher over the same images.

Every image this module creates carries the label `north_lightning.test=<uid>` or a tag made from the uid, and is
removed at the end; the registry runs from its own storage directory under pytest's tmp."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers import free_port, require
from north_lightning.envs.images import ImageBuildError
from north_lightning.envs.registry import ImagePrefetcher, ImageRecipe, ImageResolver, ImageUnavailable, PullRetry
from north_lightning.envs.session import TaskSession, image_key, resolve_task_image
from north_lightning.envs.socket_proxy import SocketProxy
from north_lightning.envs.tasks import BUNDLED_DIR, load_swe_jsonl, repo_commit
from north_lightning.rl.engines.health import wait_healthy

pytestmark = pytest.mark.docker
UID = uuid.uuid4().hex[:10]
TEST_LABEL = "north_lightning.test"
FAST = PullRetry(attempts=4, base_delay_sec=0.05, factor=2.0)


@pytest.fixture(scope="module")
def client(docker_ready):
    import docker

    client = docker.from_env(timeout=300)
    yield client
    # everything this module made: labelled images (pushed/pulled), then tags carrying the uid (recipe builds)
    for image in client.images.list(filters={"label": f"{TEST_LABEL}={UID}"}):
        client.images.remove(image.id, force=True)
    for image in client.images.list():
        for tag in image.tags:
            if UID in tag:
                client.images.remove(tag)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, client):
    """`docker-registry serve` on a free 127.0.0.1 port with its own storage; yields `127.0.0.1:PORT`."""
    binary = shutil.which("docker-registry")
    require(binary is not None, "docker-registry is not installed (scripts/ensure_docker.sh installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "registry.log", "w"))
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/v2/", 30, name="docker-registry", interval=0.1,
                     log_path=root / "registry.log")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _push(client, registry: str, name: str, base: str) -> tuple[str, str]:
    """Build a tiny image from our base (one file of it on `scratch`), push it as `<registry>/<name>`, drop the
    local tag so the engine lacks it. Returns (reference, manifest digest the registry reported)."""
    dockerfile = (f"FROM {base} AS base\nFROM scratch\nCOPY --from=base /etc/os-release /os-release\n"
                  f"LABEL {TEST_LABEL}={UID} north_lightning.test_name={name}\n")
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    reference = f"{registry}/nltest-{UID}/{name}:1"
    image, _ = client.images.build(fileobj=io.BytesIO(buf.getvalue()), custom_context=True, tag=reference,
                                   network_mode="none", rm=True)
    digest = None
    for line in client.images.push(reference.rsplit(":", 1)[0], tag="1", stream=True, decode=True):
        assert "error" not in line, line
        digest = line.get("aux", {}).get("Digest", digest)
    client.images.remove(reference)  # its only tag: the image leaves the engine, it lives in the registry now
    assert digest and digest.startswith("sha256:")
    return reference, digest


@pytest.fixture(scope="module")
def pushed(client, registry, base_image):
    """Two images in the registry: name -> (reference, digest)."""
    return {name: _push(client, registry, name, base_image) for name in ("alpha", "beta")}


def _swe_task(tmp_path: Path, image: str, with_recipe: bool):
    """A SWE record naming `image`; with a recipe, a copy of a bundled repository (made unique by a file naming
    the uid, so its content-hashed image is this test's alone)."""
    record = json.loads((BUNDLED_DIR / "swe" / "tasks.jsonl").read_text().splitlines()[0])
    record["image"] = image
    if with_recipe:
        repo = tmp_path / "repos" / record["repo"].replace("/", "__")
        shutil.copytree(BUNDLED_DIR / "swe" / "repos" / record["repo"].replace("/", "__"), repo)
        (repo / f"TEST_{UID}.txt").write_text(UID + "\n")
        record["base_commit"] = repo_commit(repo)
    (tmp_path / "tasks.jsonl").write_text(json.dumps(record) + "\n")
    return load_swe_jsonl(tmp_path / "tasks.jsonl")[0]


def test_pull_records_the_registry_digest_then_uses_the_local_image(client, pushed, tmp_path):
    reference, digest = pushed["alpha"]
    record = tmp_path / "images.json"
    resolver = ImageResolver(client=client, retry=FAST, record_path=record)
    first = resolver.resolve(reference)
    assert (first.source, first.tag, first.digest, first.attempts, first.errors) == ("pulled", reference, digest, 1, [])
    assert json.loads(record.read_text())[reference]["digest"] == digest
    again = resolver.resolve(reference)  # pull policy `missing`: present now, no registry round trip
    assert (again.source, again.digest, again.attempts) == ("local", digest, 0)
    always = ImageResolver(client=client, retry=FAST, pull_policy="always")
    assert (always.resolve(reference).source, always.resolve(reference).attempts) == ("pulled", 1)
    # `always` with the registry away: the image the engine has still serves, the failed attempts are reported
    moved = f"127.0.0.1:{free_port()}/nltest-{UID}/alpha:1"
    client.images.get(reference).tag(moved)
    stale = ImageResolver(client=client, retry=PullRetry(2, base_delay_sec=0.01), pull_policy="always").resolve(moved)
    assert (stale.source, stale.attempts, len(stale.errors)) == ("local", 2, 2)


def test_registry_that_fails_then_recovers_is_retried_with_backoff(client, registry, pushed):
    _, digest = pushed["beta"]
    proxy = SocketProxy(int(registry.rsplit(":", 1)[1]), refuse_first=3).start()  # then forwards to the registry
    slept: list[float] = []
    try:
        via_proxy = f"127.0.0.1:{proxy.port}/nltest-{UID}/beta:1"
        result = ImageResolver(client=client, retry=FAST, sleep=lambda s: (slept.append(s), time.sleep(s))).resolve(via_proxy)
    finally:
        proxy.close()
    assert result.source == "pulled" and result.digest == digest  # the same manifest, through the proxy's address
    assert proxy.refused == 3 and proxy.connections >= 1
    assert 2 <= result.attempts <= FAST.attempts and len(result.errors) == result.attempts - 1
    assert all("connection reset" in e or "EOF" in e for e in result.errors), result.errors
    assert slept == [0.05 * 2 ** k for k in range(result.attempts - 1)]  # exponential backoff between attempts


def test_registry_down_for_good_falls_back_to_the_recipe(client, base_image, tmp_path):
    down = f"127.0.0.1:{free_port()}/nltest-{UID}/gone:1"  # nothing listens there
    task = _swe_task(tmp_path, down, with_recipe=True)
    resolver = ImageResolver(client=client, retry=PullRetry(attempts=3, base_delay_sec=0.01),
                             record_path=tmp_path / "images.json")
    result = resolve_task_image(task, resolver=resolver)
    try:
        assert result.source == "built" and result.tag != down and result.attempts == 3
        assert all("connection refused" in e for e in result.errors), result.errors
        assert json.loads((tmp_path / "images.json").read_text())[down]["source"] == "built"
        with TaskSession(task) as session:  # the built image holds the repository at the record's base_commit
            assert session.box.exec(f"cat TEST_{UID}.txt")[1].strip() == UID
    finally:
        client.images.remove(result.tag, force=True)  # content-hashed on a file naming the uid: ours alone


def test_no_registry_and_no_recipe_is_an_infrastructure_error(client, registry, tmp_path):
    down = f"127.0.0.1:{free_port()}/nltest-{UID}/gone:1"
    task = _swe_task(tmp_path, down, with_recipe=False)
    assert task.repo_dir is None
    with pytest.raises(ImageUnavailable, match=r"(?s)gone:1.*no recipe.*attempt 2: .*connection refused") as err:
        resolve_task_image(task, resolver=ImageResolver(client=client, retry=PullRetry(2, base_delay_sec=0.01)))
    assert isinstance(err.value, ImageBuildError)
    # a registry that answers "not found" is asked once, not retried
    missing = f"{registry}/nltest-{UID}/never-pushed:1"
    with pytest.raises(ImageUnavailable, match=r"attempt 1: not found") as err:
        ImageResolver(client=client, retry=FAST).resolve(missing)
    assert "attempt 2" not in str(err.value)
    with pytest.raises(ImageUnavailable, match="pull_policy='never'"):
        ImageResolver(client=client, pull_policy="never").resolve(missing)
    with pytest.raises(ImageUnavailable, match=r"attempt 1: rejected \(400\).*lowercase") as err:
        ImageResolver(client=client, retry=FAST).resolve(f"NLTEST-{UID}/Upper:1")
    assert "attempt 2" not in str(err.value)


def test_prefetcher_warms_each_image_once_and_keeps_errors(client, registry, pushed, tmp_path):
    import docker.errors

    for reference, _ in pushed.values():  # an earlier test pulled one: start from an engine without them
        try:
            client.images.remove(reference)
        except docker.errors.ImageNotFound:
            pass
    resolver = ImageResolver(client=client, retry=PullRetry(2, base_delay_sec=0.01))
    tasks = {}
    for name, image in (("a", pushed["alpha"][0]), ("a2", pushed["alpha"][0]), ("b", pushed["beta"][0]),
                        ("m", f"{registry}/nltest-{UID}/never-pushed:1")):
        (tmp_path / name).mkdir()
        tasks[name] = _swe_task(tmp_path / name, image, with_recipe=False)
    prefetcher = ImagePrefetcher(lambda task: resolve_task_image(task, resolver=resolver), key=image_key, window=2)
    try:
        order = [tasks[n] for n in ("a", "a2", "b", "m")]
        assert prefetcher.warm(order) == [pushed["alpha"][0]]  # a and a2 share an image; the window is 2 tasks
        prefetcher.wait(60)
        assert prefetcher.warm(order[1:]) == [pushed["beta"][0]]
        prefetcher.wait(60)
        assert prefetcher.warm(order[2:]) == [image_key(tasks["m"])]
        prefetcher.wait(60)
        assert prefetcher.warm(order) == []  # idempotent
    finally:
        prefetcher.close()
    assert {k: (r.source, r.digest) for k, r in prefetcher.results.items()} == {
        ref: ("pulled", digest) for ref, digest in pushed.values()}
    assert list(prefetcher.errors) == [image_key(tasks["m"])]
    assert prefetcher.errors[image_key(tasks["m"])].startswith("ImageUnavailable: ")
    assert prefetcher.stats() == {"submitted": 3, "ready": 2, "failed": 1, "pending": 0}


def test_prefetcher_bounds_the_work_in_flight():
    release = threading.Event()
    started: list[str] = []

    def slow(task: str) -> str:
        started.append(task)
        release.wait(10)
        if task == "bad":
            raise RuntimeError("registry said no")
        return task

    prefetcher = ImagePrefetcher(slow, key=str, window=2, max_workers=4)
    try:
        assert prefetcher.warm(["x", "bad", "y"]) == ["x", "bad"]
        assert prefetcher.warm(["y", "z"]) == []  # two in flight already: the window is full
        release.set()
        prefetcher.wait(10)
        assert prefetcher.warm(["y", "z"]) == ["y", "z"]
        prefetcher.wait(10)
    finally:
        prefetcher.close()
    assert sorted(started) == ["bad", "x", "y", "z"] and prefetcher.errors == {"bad": "RuntimeError: registry said no"}


def test_recipe_without_dockerfile_is_unavailable(client, tmp_path):
    with pytest.raises(ImageUnavailable, match=r"recipe build of .*no Dockerfile"):
        ImageResolver(client=client).resolve(None, ImageRecipe(tmp_path, name=f"empty-{UID}"))


def test_resolver_settings_name_bad_keys_and_values():
    from north_lightning.envs.registry import resolver_settings

    settings = resolver_settings({"attempts": 6, "base_delay_sec": 0.5, "pull_policy": "always"})
    assert settings == {"retry": PullRetry(attempts=6, base_delay_sec=0.5), "pull_policy": "always"}
    assert [settings["retry"].delay(k) for k in range(3)] == [0.5, 1.0, 2.0]
    assert PullRetry(base_delay_sec=10, max_delay_sec=15).delay(3) == 15
    with pytest.raises(ValueError, match=r"images: unknown keys \['retries'\]"):
        resolver_settings({"retries": 3})
    with pytest.raises(ValueError, match=r"images: PullRetry.attempts must be >= 1"):
        resolver_settings({"attempts": 0})
    with pytest.raises(ValueError, match=r"images.pull_policy must be one of"):
        resolver_settings({"pull_policy": "sometimes"})


def test_configured_process_resolver_records_what_episodes_resolve(client, pushed, tmp_path):
    from north_lightning.envs.session import configure_image_resolver

    reference, digest = pushed["alpha"]
    task = _swe_task(tmp_path, reference, with_recipe=False)
    configure_image_resolver(retry=FAST, record_path=tmp_path / "run" / "images.json")  # as the RL sidecar does
    try:
        assert resolve_task_image(task).tag == reference  # (task_image adds the agent layer: test_privileges.py)
    finally:
        configure_image_resolver()
    entry = json.loads((tmp_path / "run" / "images.json").read_text())[reference]
    assert entry["digest"] == digest and entry["source"] in ("pulled", "local") and entry["resolved_at"]
