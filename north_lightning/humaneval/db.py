"""The SQLite store of a blind pairwise evaluation: responses, pair items, annotators and their votes.

WAL journal with `synchronous=FULL`: every vote is committed before the web app answers, so a vote the
browser saw acknowledged survives a killed server. One connection per request/thread (`connect`); writers
wait on each other through `busy_timeout` instead of failing.

Tokens are stored as SHA-256 hashes only; an annotator is identified by the hash of the token they present.
Which side of the screen a response appears on, and the order of the items, are derived per annotator from a
secret kept in the database (`meta.secret`), so a reload shows the same layout and a vote records what was
actually on the left and right.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS categories (name TEXT PRIMARY KEY, rubric TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
    response_id TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, system TEXT NOT NULL, category TEXT NOT NULL,
    task_id TEXT, passed INTEGER, length INTEGER NOT NULL, payload TEXT NOT NULL,
    UNIQUE (prompt_id, system));
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, category TEXT NOT NULL,
    response_a TEXT NOT NULL REFERENCES responses, response_b TEXT NOT NULL REFERENCES responses);
CREATE TABLE IF NOT EXISTS annotators (
    annotator_id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    annotator_id INTEGER NOT NULL REFERENCES annotators, item_id TEXT NOT NULL REFERENCES items,
    left_response TEXT NOT NULL, right_response TEXT NOT NULL,
    rating_left INTEGER NOT NULL CHECK (rating_left BETWEEN 1 AND 5),
    rating_right INTEGER NOT NULL CHECK (rating_right BETWEEN 1 AND 5),
    preference INTEGER NOT NULL CHECK (preference BETWEEN 1 AND 5),
    comment TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (annotator_id, item_id));
"""

# The 5-point preference as shown to annotators; 1-2 favour the left response, 4-5 the right one.
PREFERENCE_LABELS = {1: "left much better", 2: "left better", 3: "tie", 4: "right better", 5: "right much better"}


class VoteError(ValueError):
    """A vote that cannot be stored (unknown item, value out of range); the message names the field."""


@dataclass(frozen=True)
class Annotator:
    annotator_id: int
    name: str
    is_admin: bool


def connect(path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open the evaluation database in WAL mode with full fsync on commit; `create` makes the schema (and the
    layout secret) when missing, which takes a write lock, so the web app opens with create=False."""
    if not create and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such evaluation database")
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    if create:
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(16),))
    return conn


def _secret(conn: sqlite3.Connection) -> bytes:
    return conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0].encode()


def _digest(secret: bytes, text: str) -> bytes:
    return hmac.new(secret, text.encode(), hashlib.sha256).digest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---- loading ------------------------------------------------------------------------------------------------
def load_responses(conn: sqlite3.Connection, responses: Iterable[dict[str, Any]],
                   rubrics: dict[str, str]) -> int:
    """Store generated responses (see generate.py for the record) and make one item per prompt and pair of
    systems. Idempotent: loading the same records again changes nothing. Returns the number of items."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for name, rubric in rubrics.items():
            conn.execute("INSERT INTO categories VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET rubric = excluded.rubric",
                         (name, rubric))
        for rec in responses:
            for key in ("response_id", "prompt_id", "system", "category"):
                if not rec.get(key):
                    raise ValueError(f"response {rec.get('response_id')!r}: missing key {key!r}")
            if rec["category"] not in rubrics:
                raise ValueError(f"response {rec['response_id']}: category {rec['category']!r} has no rubric")
            passed = rec.get("passed")
            conn.execute("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (rec["response_id"], rec["prompt_id"], rec["system"], rec["category"], rec.get("task_id"),
                          None if passed is None else int(bool(passed)), response_length(rec), json.dumps(rec)))
            by_prompt.setdefault(rec["prompt_id"], []).append(rec)
        for prompt_id, recs in by_prompt.items():
            for a, b in itertools.combinations(sorted(recs, key=lambda r: r["system"]), 2):
                conn.execute("INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?)",
                             (item_id_for(prompt_id, a["system"], b["system"]), prompt_id, a["category"],
                              a["response_id"], b["response_id"]))
    return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]


def item_id_for(prompt_id: str, system_a: str, system_b: str) -> str:
    """An opaque id (the page shows it in URLs, so it must not name the systems)."""
    return "item-" + hashlib.sha256(f"{prompt_id}\0{system_a}\0{system_b}".encode()).hexdigest()[:16]


def response_length(rec: dict[str, Any]) -> int:
    """What a reader has to read: the final answer plus the diff, in characters (for the length bias)."""
    return len(rec.get("final_answer") or "") + len(rec.get("diff") or "")


# ---- annotators ---------------------------------------------------------------------------------------------
def add_annotator(conn: sqlite3.Connection, name: str, *, admin: bool = False) -> str:
    """Register an annotator (or an admin) and return their new token; only its hash is stored."""
    if not name or not name.strip():
        raise ValueError("annotator name must not be empty")
    token = secrets.token_urlsafe(24)
    try:
        with conn:
            conn.execute("INSERT INTO annotators (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                         (name.strip(), hash_token(token), int(admin), time.time()))
    except sqlite3.IntegrityError as err:
        raise ValueError(f"annotator {name!r} already exists") from err
    return token


def annotator_for_token(conn: sqlite3.Connection, token: str | None) -> Annotator | None:
    if not token:
        return None
    row = conn.execute("SELECT annotator_id, name, is_admin FROM annotators WHERE token_hash = ?",
                       (hash_token(token),)).fetchone()
    return Annotator(row[0], row[1], bool(row[2])) if row else None


# ---- items and layout ---------------------------------------------------------------------------------------
def item_order(conn: sqlite3.Connection, annotator_id: int) -> list[str]:
    """Every item id, in this annotator's own (stable, secret-seeded) order."""
    secret = _secret(conn)
    ids = [r[0] for r in conn.execute("SELECT item_id FROM items")]
    return sorted(ids, key=lambda i: _digest(secret, f"order:{annotator_id}:{i}"))


def layout(conn: sqlite3.Connection, annotator_id: int, item_id: str) -> tuple[str, str]:
    """(left response id, right response id) of an item as this annotator sees it."""
    row = conn.execute("SELECT response_a, response_b FROM items WHERE item_id = ?", (item_id,)).fetchone()
    if row is None:
        raise VoteError(f"unknown item {item_id!r}")
    swap = _digest(_secret(conn), f"side:{annotator_id}:{item_id}")[0] & 1
    return (row[1], row[0]) if swap else (row[0], row[1])


def item(conn: sqlite3.Connection, item_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT i.item_id, i.prompt_id, i.category, c.rubric FROM items i "
                       "JOIN categories c ON c.name = i.category WHERE item_id = ?", (item_id,)).fetchone()
    return dict(row) if row else None


def response(conn: sqlite3.Connection, response_id: str) -> dict[str, Any]:
    return json.loads(conn.execute("SELECT payload FROM responses WHERE response_id = ?",
                                   (response_id,)).fetchone()[0])


# ---- votes --------------------------------------------------------------------------------------------------
def _check_scale(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise VoteError(f"{name}: expected an integer 1-5, got {value!r}") from None
    if not 1 <= number <= 5 or str(number) != str(value).strip():
        raise VoteError(f"{name}: expected an integer 1-5, got {value!r}")
    return number


def save_vote(conn: sqlite3.Connection, annotator_id: int, item_id: str, *, rating_left: Any, rating_right: Any,
              preference: Any, comment: str = "") -> dict[str, Any]:
    """Insert or replace this annotator's vote on an item, committed (fsynced) before returning. The sides
    are the annotator's layout, recorded with the vote."""
    left, right = layout(conn, annotator_id, item_id)
    values = (_check_scale("rating_left", rating_left), _check_scale("rating_right", rating_right),
              _check_scale("preference", preference))
    now = time.time()
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(annotator_id, item_id) DO UPDATE "
            "SET rating_left = excluded.rating_left, rating_right = excluded.rating_right, "
            "preference = excluded.preference, comment = excluded.comment, updated_at = excluded.updated_at",
            (annotator_id, item_id, left, right, *values, str(comment or "")[:5000], now, now))
    return get_vote(conn, annotator_id, item_id)  # type: ignore[return-value]


def get_vote(conn: sqlite3.Connection, annotator_id: int, item_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM votes WHERE annotator_id = ? AND item_id = ?", (annotator_id, item_id)).fetchone()
    return dict(row) if row else None


def votes_of(conn: sqlite3.Connection, annotator_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM votes WHERE annotator_id = ? ORDER BY item_id",
                                          (annotator_id,))]


def all_votes(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every vote joined with what the report needs: annotator name, category, systems on each side, the
    responses' lengths, test outcome and task ids."""
    sql = """
    SELECT v.*, a.name AS annotator, i.category, i.prompt_id,
           l.system AS left_system, r.system AS right_system, l.length AS left_length, r.length AS right_length,
           l.passed AS left_passed, r.passed AS right_passed, l.task_id AS left_task, r.task_id AS right_task
    FROM votes v JOIN annotators a USING (annotator_id) JOIN items i USING (item_id)
    JOIN responses l ON l.response_id = v.left_response JOIN responses r ON r.response_id = v.right_response
    ORDER BY v.item_id, a.name"""
    return [dict(r) for r in conn.execute(sql)]


def count_items(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]


def annotator_id_by_name(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT annotator_id FROM annotators WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None
