"""The rating web app (Starlette + Jinja2, served by uvicorn): blind pairs, ratings, preference, report.

Server-rendered pages; the only JavaScript is the keyboard shortcuts. Sign-in: a token from
`humaneval add-annotator` (a form that sets an HttpOnly cookie, or an `Authorization: Bearer` header).
No or an unknown token: 401. A known token asking for what is not theirs: 403 (an annotator on the report, on
another annotator's votes, or voting in another's name; an admin voting).

Votes live under `/votes/{annotator}/{item_id}`: GET reads, POST stores (form or JSON). The POST commits with
a full fsync before it answers, so whatever the browser saw acknowledged survives a SIGKILL of the server.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from markupsafe import Markup
from starlette.templating import Jinja2Templates

from north_lightning.humaneval import db
from north_lightning.humaneval.trajectory_view import PYGMENTS_CSS, response_view

TEMPLATES = Path(__file__).resolve().parent / "templates"
COOKIE = "nl_humaneval_token"


class _Connections(threading.local):
    conn: sqlite3.Connection | None = None


def create_app(db_path: str | Path, *, n_boot: int = 1000) -> Starlette:
    """The app over an existing evaluation database (made by `humaneval generate` / `db.load_responses`)."""
    db_path = Path(db_path)
    db.connect(db_path).close()  # schema + secret exist before the first request (one writer, now)
    local = _Connections()
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals["pygments_css"] = Markup(PYGMENTS_CSS)

    def conn() -> sqlite3.Connection:
        if local.conn is None:
            local.conn = db.connect(db_path, create=False)
        return local.conn

    def token_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def who(request: Request) -> db.Annotator | Response:
        """The signed-in annotator, or the 401 response to send."""
        token = token_of(request)
        person = db.annotator_for_token(conn(), token)
        if person is not None:
            return person
        why = "sign in with your token" if not token else "unknown token"
        if "text/html" in request.headers.get("accept", ""):
            return templates.TemplateResponse(request, "login.html", {"error": why}, status_code=401)
        return JSONResponse({"error": why}, status_code=401)

    def forbidden(request: Request, why: str) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return templates.TemplateResponse(request, "message.html", {"title": "Forbidden", "text": why},
                                              status_code=403)
        return JSONResponse({"error": why}, status_code=403)

    def admin(request: Request) -> db.Annotator | Response:
        """The signed-in admin, or the 401 / 403 response to send (the report pages are the admin's alone)."""
        person = who(request)
        if isinstance(person, Response) or person.is_admin:
            return person
        return forbidden(request, "only the admin token sees the report")

    def index(request: Request) -> Response:
        person = who(request)
        if isinstance(person, Response):
            return person
        if person.is_admin:
            return RedirectResponse("/report", status_code=303)
        order = db.item_order(conn(), person.annotator_id)
        done = {v["item_id"] for v in db.votes_of(conn(), person.annotator_id)}
        for n, item_id in enumerate(order, 1):
            if item_id not in done:
                return RedirectResponse(f"/items/{n}", status_code=303)
        return templates.TemplateResponse(request, "message.html", {
            "title": "All done", "text": f"You voted on all {len(order)} items. Thank you, {person.name}.",
            "links": [("/items/1", "review your votes")]})

    def login_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"error": None})

    async def login(request: Request) -> Response:
        token = str((await request.form()).get("token", "")).strip()
        person = await run_in_threadpool(lambda: db.annotator_for_token(conn(), token))
        if person is None:
            return templates.TemplateResponse(request, "login.html", {"error": "unknown token"}, status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=30 * 24 * 3600)
        return response

    def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    def item_page(request: Request) -> Response:
        person = who(request)
        if isinstance(person, Response):
            return person
        if person.is_admin:
            return forbidden(request, "the admin token reads the report; it does not vote")
        order = db.item_order(conn(), person.annotator_id)
        n = request.path_params["n"]
        if not 1 <= n <= len(order):
            return templates.TemplateResponse(request, "message.html", {"title": "Not found",
                                              "text": f"there are items 1-{len(order)}"}, status_code=404)
        item_id = order[n - 1]
        info = db.item(conn(), item_id)
        left, right = db.layout(conn(), person.annotator_id, item_id)
        vote = db.get_vote(conn(), person.annotator_id, item_id)
        voted = len(db.votes_of(conn(), person.annotator_id))
        left_view, right_view = response_view(db.response(conn(), left)), response_view(db.response(conn(), right))
        return templates.TemplateResponse(request, "item.html", {
            "person": person, "n": n, "total": len(order), "voted": voted, "item": info, "vote": vote,
            "prompt": left_view["prompt"], "left": left_view, "right": right_view,
            "action": f"/votes/{quote(person.name)}/{quote(item_id)}", "labels": db.PREFERENCE_LABELS,
            "saved": request.query_params.get("saved") == "1"})

    def _authorise_vote(request: Request, write: bool) -> db.Annotator | Response:
        person = who(request)
        if isinstance(person, Response):
            return person
        owner = request.path_params["annotator"]
        if owner != person.name and not (person.is_admin and not write):
            return forbidden(request, f"{person.name} may not {'change' if write else 'read'} the votes of {owner}")
        if write and person.is_admin:
            return forbidden(request, "the admin token does not vote")
        return person

    def read_vote(request: Request) -> Response:
        person = _authorise_vote(request, write=False)
        if isinstance(person, Response):
            return person
        owner = db.annotator_id_by_name(conn(), request.path_params["annotator"])
        vote = db.get_vote(conn(), owner, request.path_params["item_id"]) if owner is not None else None
        if vote is None:
            return JSONResponse({"error": "no such vote"}, status_code=404)
        return JSONResponse(vote)

    def read_votes(request: Request) -> Response:
        person = _authorise_vote(request, write=False)
        if isinstance(person, Response):
            return person
        owner = db.annotator_id_by_name(conn(), request.path_params["annotator"])
        return JSONResponse(db.votes_of(conn(), owner) if owner is not None else [])

    async def write_vote(request: Request) -> Response:
        person = await run_in_threadpool(_authorise_vote, request, True)
        if isinstance(person, Response):
            return person
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                fields: dict[str, Any] = dict(await request.json())
            except (ValueError, TypeError):
                return JSONResponse({"error": "body is not a JSON object"}, status_code=400)
        else:
            fields = dict(await request.form())
        item_id = request.path_params["item_id"]
        try:  # conn() inside the worker thread: each thread has its own connection
            vote = await run_in_threadpool(lambda: db.save_vote(
                conn(), person.annotator_id, item_id, rating_left=fields.get("rating_left"),
                rating_right=fields.get("rating_right"), preference=fields.get("preference"),
                comment=str(fields.get("comment") or "")))
        except db.VoteError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        # committed and fsynced: only now does the browser hear about it
        if "text/html" in request.headers.get("accept", "") and str(fields.get("n", "")).isdigit():
            n, total = int(fields["n"]), await run_in_threadpool(lambda: db.count_items(conn()))
            return RedirectResponse(f"/items/{n + 1}?saved=1" if n < total else "/", status_code=303)
        return JSONResponse({"ok": True, "vote": vote})

    def report_page(request: Request) -> Response:
        person = admin(request)
        if isinstance(person, Response):
            return person
        from north_lightning.humaneval.report import build_report, format_summary

        report = build_report(conn(), n_boot=n_boot)
        if request.url.path.endswith(".json"):
            return JSONResponse(report)
        return templates.TemplateResponse(request, "report.html", {"summary": format_summary(report),
                                                                  "report_json": json.dumps(report, indent=2)})

    def report_file(request: Request) -> Response:
        person = admin(request)
        if isinstance(person, Response):
            return person
        from north_lightning.humaneval.report import build_report, export_rows, write_chart

        if request.path_params["name"] == "chart.png":
            import io

            buf = io.BytesIO()
            write_chart(build_report(conn(), n_boot=n_boot), buf)
            return Response(buf.getvalue(), media_type="image/png")
        if request.path_params["name"] == "votes.jsonl":
            return PlainTextResponse("".join(json.dumps(r) + "\n" for r in export_rows(conn())))
        return PlainTextResponse("not found", status_code=404)

    def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", index), Route("/healthz", health),
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST", "GET"]),
        Route("/items/{n:int}", item_page),
        Route("/votes/{annotator}", read_votes, methods=["GET"]),
        Route("/votes/{annotator}/{item_id:path}", read_vote, methods=["GET"]),
        Route("/votes/{annotator}/{item_id:path}", write_vote, methods=["POST"]),
        Route("/report", report_page), Route("/report.json", report_page),
        Route("/report/{name}", report_file),
    ]
    return Starlette(routes=routes)


__all__ = ["COOKIE", "create_app"]
