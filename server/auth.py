"""Bearer-token auth for the API (`--auth-token` / `AUTH_TOKEN`), as an aiohttp middleware.

An orchestrator that registered this server with a `token` sends `Authorization: Bearer <token>`
on every request (go-livepeer byoc `createWorkerReq`); a wrong or missing one gets 401, which
go-livepeer takes as "remove the capability, the worker will re-register with the right token".
`/health` and the other operational read-outs stay open, so that probes work without the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Iterable

from aiohttp import web

from server.models import ErrorResponse

logger = logging.getLogger(__name__)

# Open without a token: probes and the capability's self-description (pytrickle's system routes).
OPEN_PATHS = frozenset({"/health", "/version", "/app-version", "/hardware/info", "/hardware/stats"})


def _digest(value: str) -> bytes:
    # Comparing fixed-size digests keeps compare_digest constant-time whatever the lengths.
    return hashlib.sha256(value.encode()).digest()


def token_matches(header: str | None, token: str) -> bool:
    """`header` is `Bearer <token>` (scheme case-insensitive), compared in constant time."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(_digest(credentials.strip()), _digest(token))


def unauthorized() -> web.Response:
    body = ErrorResponse(error="Unauthorized", message="Invalid bearer token.")
    return web.Response(
        status=401,
        text=body.model_dump_json(),
        content_type="application/json",
        headers={"WWW-Authenticate": "Bearer"},
    )


def auth_middleware(token: str, open_prefixes: Iterable[str] = ()):
    """Requires the token on every path but `OPEN_PATHS` and `open_prefixes` (e.g. a mounted trickle
    relay, whose publishers and subscribers send no Authorization header). CORS preflights pass:
    a browser never sends credentials on them."""
    prefixes = tuple(open_prefixes)

    @web.middleware
    async def check_bearer(request: web.Request, handler):
        path = request.path
        if request.method == "OPTIONS" or path in OPEN_PATHS or (prefixes and path.startswith(prefixes)):
            return await handler(request)
        if not token_matches(request.headers.get("Authorization"), token):
            logger.info("401 for %s %s from %s", request.method, path, request.remote)
            return unauthorized()
        return await handler(request)

    return check_bearer


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None, no_auth: bool) -> tuple[str | None, bool]:
    """The token the server runs with, and whether it was generated here.

    Off by default on a loopback address. Listening on any other address without a token, the
    server makes one (kept in memory, never logged; it reaches an orchestrator through the
    registration), unless `--no-auth` says the API is meant to be open."""
    if token:
        return token, False
    if no_auth or is_loopback(host):
        return None, False
    return secrets.token_urlsafe(32), True
