"""The rating app: sign-in (401/403), annotators isolated from each other, blind randomised layout, resume;
a real server process: two annotators voting at once lose nothing, and acknowledged votes survive SIGKILL."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from starlette.testclient import TestClient

from helpers import free_port
from humaneval.live_server import kill_server, start_server
from humaneval.votes_table import RUBRICS, many_responses
from north_lightning.humaneval import db
from north_lightning.humaneval.serve import COOKIE, create_app

N_ITEMS = 40
HTML = {"accept": "text/html"}


@pytest.fixture()
def eval_db(tmp_path):
    path = tmp_path / "he.db"
    conn = db.connect(path)
    db.load_responses(conn, many_responses(N_ITEMS), RUBRICS)
    tokens = {name: db.add_annotator(conn, name) for name in ("alice", "bob")}
    tokens["admin"] = db.add_annotator(conn, "admin", admin=True)
    conn.close()
    return path, tokens


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_tokens_isolation_and_blind_layout(eval_db):
    path, tok = eval_db
    client = TestClient(create_app(path, n_boot=100))
    assert client.get("/", headers=HTML).status_code == 401  # no token: the sign-in page, 401
    assert client.get("/items/1").status_code == 401
    assert client.get("/items/1", headers=bearer("not-a-token")).status_code == 401
    assert client.get("/votes/alice", headers=bearer("not-a-token")).status_code == 401
    r = client.post("/login", data={"token": "wrong"}, headers=HTML)
    assert r.status_code == 401 and "unknown token" in r.text

    # alice signs in through the form: a cookie, then resumable from the first item she has not voted on
    alice = TestClient(create_app(path, n_boot=100))
    r = alice.post("/login", data={"token": tok["alice"]}, follow_redirects=False)
    assert r.status_code == 303 and COOKIE in r.cookies
    r = alice.get("/", follow_redirects=False)
    assert r.headers["location"] == "/items/1"
    page = alice.get("/items/1", headers=HTML)
    assert page.status_code == 200 and RUBRICS["edit"] in page.text or RUBRICS["explain"] in page.text
    assert "sys-a" not in page.text and "sys-b" not in page.text  # blind: no system ids on the page
    assert 'class="hl"' in page.text and "Turn 1" in page.text and "item 1 of 40" in page.text
    assert "<script>window.pwned" not in page.text and "&lt;script&gt;window.pwned" in page.text

    conn = db.connect(path)
    alice_id, bob_id = db.annotator_id_by_name(conn, "alice"), db.annotator_id_by_name(conn, "bob")
    first = db.item_order(conn, alice_id)[0]
    r = alice.post(f"/votes/alice/{first}", data={"n": "1", "rating_left": "4", "rating_right": "2",
                                                 "preference": "2", "comment": "left ran the tests"},
                   headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/items/2?saved=1"
    assert alice.get("/", follow_redirects=False).headers["location"] == "/items/2"
    assert alice.get(f"/votes/alice/{first}").json()["comment"] == "left ran the tests"
    r = alice.post(f"/votes/alice/{first}", json={"rating_left": 6, "rating_right": 2, "preference": 2})
    assert r.status_code == 400 and "rating_left" in r.json()["error"]

    # bob can neither read nor overwrite alice's vote, nor list her votes; alice keeps what she wrote
    bob = bearer(tok["bob"])
    assert client.get(f"/votes/alice/{first}", headers=bob).status_code == 403
    assert client.get("/votes/alice", headers=bob).status_code == 403
    r = client.post(f"/votes/alice/{first}", json={"rating_left": 1, "rating_right": 1, "preference": 5}, headers=bob)
    assert r.status_code == 403
    assert db.get_vote(conn, alice_id, first)["preference"] == 2 and db.get_vote(conn, bob_id, first) is None

    # the report is the admin's: 403 for annotators; the admin reads votes but does not vote
    assert client.get("/report", headers=bob).status_code == 403
    admin = bearer(tok["admin"])
    assert client.get("/report", headers=admin).status_code == 200
    assert client.get("/report.json", headers=admin).json()["votes"] == 1
    assert client.get("/report/chart.png", headers=admin).content[:4] == b"\x89PNG"
    assert client.get(f"/votes/alice/{first}", headers=admin).json()["rating_left"] == 4
    r = client.post(f"/votes/admin/{first}", json={"rating_left": 1, "rating_right": 1, "preference": 5},
                    headers=admin)
    assert r.status_code == 403
    assert client.get("/items/1", headers={**admin, **HTML}).status_code == 403

    # left/right randomised per item and annotator; item order per annotator
    sides = {name: [db.layout(conn, aid, i)[0].endswith("sys-a") for i in sorted(db.item_order(conn, aid))]
             for name, aid in (("alice", alice_id), ("bob", bob_id))}
    assert 0 < sum(sides["alice"]) < N_ITEMS and sides["alice"] != sides["bob"]
    assert db.item_order(conn, alice_id) != db.item_order(conn, bob_id)


def _post(port: int, token: str, who: str, item_id: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/votes/{who}/{item_id}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _choice(name: str, k: int) -> dict:
    return {"rating_left": 1 + (k % 5), "rating_right": 1 + ((k + (name == "bob")) % 5),
            "preference": 1 + ((3 * k + len(name)) % 5), "comment": f"{name} {k}"}


@pytest.mark.slow
def test_concurrent_annotators_lose_nothing_and_acked_votes_survive_sigkill(eval_db, tmp_path):
    path, tok = eval_db
    port = free_port()
    server = start_server(path, port, tmp_path / "serve.log")
    conn = db.connect(path)
    order = {n: db.item_order(conn, db.annotator_id_by_name(conn, n)) for n in ("alice", "bob")}
    acked: dict[tuple[str, str], dict] = {}
    errors: list[BaseException] = []

    def vote_all(name: str, items: list[str], stop_after: int | None = None, done: threading.Event | None = None):
        try:
            for k, item_id in enumerate(items):
                reply = _post(port, tok[name], name, item_id, _choice(name, k))
                assert reply["ok"]
                acked[(name, item_id)] = _choice(name, k)
                if stop_after is not None and k + 1 == stop_after and done is not None:
                    done.set()
        except (urllib.error.URLError, ConnectionError) as err:  # the server was killed under us: expected
            if done is None:
                errors.append(err)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    try:
        # phase 1: both annotators vote on the first half at the same time, every vote acknowledged
        half = N_ITEMS // 2
        threads = [threading.Thread(target=vote_all, args=(n, order[n][:half])) for n in ("alice", "bob")]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors and len(acked) == 2 * half
        # phase 2: both keep voting; the server is SIGKILLed while their requests are in flight
        killed = threading.Event()
        threads = [threading.Thread(target=vote_all, args=(n, order[n][half:], 5, killed)) for n in ("alice", "bob")]
        [t.start() for t in threads]
        assert killed.wait(60)
        kill_server(server)
        [t.join() for t in threads]
        assert not errors and 2 * half + 5 <= len(acked) < 2 * N_ITEMS  # the kill cut the session short
    finally:
        kill_server(server)
    # restart: every acknowledged vote is there with exactly the values sent; then voting goes on
    server = start_server(path, port, tmp_path / "serve.log")
    try:
        for name in ("alice", "bob"):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/votes/{name}",
                                         headers={"authorization": f"Bearer {tok[name]}"})
            stored = {v["item_id"]: v for v in json.loads(urllib.request.urlopen(req, timeout=30).read())}
            for (who, item_id), sent in acked.items():
                if who == name:
                    got = stored[item_id]
                    assert {k: got[k] for k in sent} == sent, (name, item_id)
        rest = [(n, i, k) for n in ("alice", "bob") for k, i in enumerate(order[n]) if (n, i) not in acked]
        for name, item_id, k in rest:
            assert _post(port, tok[name], name, item_id, _choice(name, k))["ok"]
            acked[(name, item_id)] = _choice(name, k)
    finally:
        kill_server(server)
    assert len(acked) == 2 * N_ITEMS
    assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 2 * N_ITEMS
