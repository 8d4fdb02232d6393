"""A per-run key on every route of our `vllm serve` sampler servers but `/health`.

Why our own check: the servers run with `VLLM_SERVER_DEV_MODE=1` (weights are reloaded through the dev route
`/collective_rpc`), and vLLM's `--api-key` guards only the `/v1`, `/v2`, `/inference` and `/cohere` prefixes
(vLLM 0.32, `vllm/entrypoints/serve/middleware/authenticate.py`), leaving `/collective_rpc`, `/pause`,
`/resume`, the weight-transfer routes, `/sleep`, `/reset_prefix_cache`... open to anyone who can reach the port:
on a cluster network, anyone could swap the policy being trained. `SamplerKeyMiddleware` is loaded by the server
through vLLM's `--middleware` (a class is added with `app.add_middleware(cls)`, no arguments, so it reads the
key from `NORTH_SAMPLER_KEY` in the server's environment) and refuses every request without the key, whatever
its route, with 401. The launcher generates one random key per run and every client sends it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

SAMPLER_KEY_ENV = "NORTH_SAMPLER_KEY"
MIDDLEWARE_PATH = "north_lightning.rl.engines.auth.SamplerKeyMiddleware"
OPEN_PATHS = frozenset({"/health"})  # liveness probes (the launcher's, SLURM's) carry no key


def new_sampler_key() -> str:
    return secrets.token_urlsafe(32)


def sampler_key() -> str | None:
    """The key this process's clients send: `NORTH_SAMPLER_KEY` (set by the launcher or the SLURM script)."""
    return os.environ.get(SAMPLER_KEY_ENV) or None


def auth_headers(key: str | None = None) -> dict[str, str]:
    key = key or sampler_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


class SamplerKeyMiddleware:
    """Pure ASGI middleware: 401 for every HTTP/websocket request but `OPEN_PATHS` without `Bearer <key>`."""

    def __init__(self, app: Any) -> None:
        key = sampler_key()
        if not key:
            raise RuntimeError(f"{SAMPLER_KEY_ENV} is not set: the sampler server refuses to start without a key")
        self.app = app
        self.digest = hashlib.sha256(key.encode()).digest()

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return secrets.compare_digest(hashlib.sha256(token.encode()).digest(), self.digest)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan events
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path in OPEN_PATHS or self._authorized(scope):
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        await JSONResponse({"error": "Unauthorized: this sampler server needs its run's key"}, status_code=401)(
            scope, receive, send)
        return None
