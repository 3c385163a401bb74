"""Bearer-token auth for the API (`--auth-token` / `AUTH_TOKEN`), as an aiohttp middleware.

An orchestrator that registered this server with a `token` sends `Authorization: Bearer <token>`
on every request (go-livepeer byoc `createWorkerReq`); a wrong or missing one gets 401, which
go-livepeer takes as "remove the capability, the worker will re-register with the right token".
`/health` and the other operational read-outs stay open, so that probes work without the token.

Browsers cannot add that header to a page's own requests (the dashboard, the ComfyUI editor, their
WebSocket), so a person signs in once at `/login` with the token and gets a session cookie: an
HMAC of the token (never the token itself), HttpOnly and SameSite=Strict, which every request of
those pages then carries. A page opened without it is sent to `/login`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import logging
import secrets
from collections.abc import Iterable
from urllib.parse import urlencode

from aiohttp import web

from server.http.errors import ErrorResponse
from server.http.routes import Route, add_routes

logger = logging.getLogger(__name__)

# Open without a token: probes, the capability's self-description (pytrickle's system routes),
# and the sign-in page.
LOGIN_PATH = "/login"
OPEN_PATHS = frozenset(
    {"/health", "/version", "/app-version", "/hardware/info", "/hardware/stats", LOGIN_PATH}
)
SESSION_COOKIE = "comfystream_session"


def _digest(value: str) -> bytes:
    # Comparing fixed-size digests keeps compare_digest constant-time whatever the lengths.
    return hashlib.sha256(value.encode()).digest()


def token_matches(header: str | None, token: str) -> bool:
    """`header` is `Bearer <token>` (scheme case-insensitive), compared in constant time."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(_digest(credentials.strip()), _digest(token))


def session_value(token: str) -> str:
    """The session cookie's value for `token`: it proves the token was given, and cannot be
    turned back into it."""
    return hmac.new(token.encode(), b"comfystream browser session", hashlib.sha256).hexdigest()


def session_matches(cookie: str | None, token: str) -> bool:
    return cookie is not None and hmac.compare_digest(_digest(cookie), _digest(session_value(token)))


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _wants_page(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


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
        if token_matches(request.headers.get("Authorization"), token) or session_matches(
            request.cookies.get(SESSION_COOKIE), token
        ):
            return await handler(request)
        if _wants_page(request):  # a person opening a page: sign in first, then back here
            raise web.HTTPSeeOther(f"{LOGIN_PATH}?{urlencode({'next': request.path_qs})}")
        logger.info("401 for %s %s from %s", request.method, path, request.remote)
        return unauthorized()

    return check_bearer


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>comfystream: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}
input,button{{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.3rem 0}}
.error{{color:#b00}}</style></head>
<body><h1>comfystream</h1>
<p>This server requires its API token (<code>--auth-token</code> / <code>AUTH_TOKEN</code>).</p>
{error}<form method="post" action="{action}">
<input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
<button type="submit">Sign in</button></form></body></html>"""


def _login_page(next_path: str, error: str = "", status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        content_type="text/html",
        text=_LOGIN_PAGE.format(
            action=LOGIN_PATH,
            next=html.escape(next_path, quote=True),
            error=f'<p class="error">{html.escape(error)}</p>' if error else "",
        ),
        headers={"Cache-Control": "no-store"},
    )


def add_login_routes(app: web.Application, token: str) -> None:
    """`GET /login`: the sign-in form; `POST /login` (form: `token`, `next`): the session cookie
    and back to `next` when the token is right, the form again with 401 when not."""

    async def form(request: web.Request) -> web.Response:
        return _login_page(_safe_next(request.query.get("next")))

    async def sign_in(request: web.Request) -> web.Response:
        data = await request.post()
        next_path = _safe_next(str(data.get("next") or ""))
        given = str(data.get("token") or "")
        if not hmac.compare_digest(_digest(given), _digest(token)):
            logger.info("sign-in refused from %s", request.remote)
            return _login_page(next_path, "That is not this server's token.", status=401)
        response = web.HTTPSeeOther(next_path)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(token),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        raise response

    add_routes(
        app, "auth", [Route("GET", LOGIN_PATH, form, allow_head=True), Route("POST", LOGIN_PATH, sign_in)]
    )


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
