"""Refuses cross-site requests that change state, as ComfyUI's origin middleware does.

A browser lets any page POST a "simple" request (a `text/plain` body needs no CORS preflight) to
127.0.0.1, and open a WebSocket to it: so a page on any origin could start streams, queue prompts or
read /ws. Browsers always name the page's origin in `Origin` on those requests; tools (the
gateway, curl, our own clients) send none. So a request that changes state, or opens `/ws`, is
refused (403) when it carries an `Origin` (or `Sec-Fetch-Site: cross-site`) that is not the server's
own origin (the `Host` it was asked for) and not one the operator allowed with `--allow-origin`.
Same-origin pages (the dashboard, the ComfyUI editor) pass. Unlike ComfyUI the check is not limited
to loopback hosts: a deployment behind a name is as exposed to cross-site pages as a laptop."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from server.http import errors
from server.http.errors import ErrorResponse

logger = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY_ORIGIN = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` lowercased without a default port; None when it is not an origin
    (`null`, garbage)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def _authority(origin: str) -> str:
    return origin.split("://", 1)[1]


def _host_authority(host: str, scheme: str) -> str | None:
    """The Host header as an authority without the scheme's default port."""
    normalized = normalize_origin(f"{scheme}://{host}")
    return _authority(normalized) if normalized else None


class OriginPolicy:
    """Which origins may send state-changing requests besides the server's own."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.any = False
        self.allowed: set[str] = set()
        for value in allowed:
            if value.strip() == ANY_ORIGIN:
                self.any = True
                continue
            origin = normalize_origin(value)
            if origin is None:
                raise ValueError(f"--allow-origin: expected scheme://host[:port] or *, got {value!r}")
            self.allowed.add(origin)

    def refusal(self, request: web.Request) -> str | None:
        """Why `request` is refused, or None when it may go on."""
        if request.method in SAFE_METHODS and not _is_websocket(request):
            return None  # reading is guarded by the browser (no CORS headers are sent)
        if self.any:
            return None
        origin_header = request.headers.get(hdrs.ORIGIN)
        if origin_header is None:
            if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
                return "a cross-site request without an Origin"
            return None  # not from a browser page: the gateway, a CLI, a test client
        origin = normalize_origin(origin_header)
        if origin is None:
            return f"Origin {origin_header!r} is not allowed"
        if origin in self.allowed:
            return None
        # The same origin: the page was loaded from the host this request is addressed to. The
        # scheme is the page's (behind a TLS proxy the server itself sees plain http).
        host = _host_authority(request.host, origin.split("://", 1)[0])
        if host is not None and host == _authority(origin):
            return None
        return f"Origin {origin_header!r} does not match the host {request.host!r}"


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def documented_responses(op) -> dict[int, object]:
    """For the OpenAPI document: the 403 this middleware may answer to `op` (an openapi.Operation)."""
    if op.method.upper() in SAFE_METHODS and op.path not in ("/ws", "/api/ws"):
        return {}
    return {403: ErrorResponse}


def origin_middleware(policy: OriginPolicy):
    """The aiohttp middleware that applies `policy` to every request."""

    @web.middleware
    async def check_origin(request: web.Request, handler):
        reason = policy.refusal(request)
        if reason is not None:
            logger.warning("refused %s %s: %s", request.method, request.path, reason)
            raise errors.error_response(
                web.HTTPForbidden,
                "Forbidden origin",
                f"{reason}; a page on another origin may not change this server's state "
                "(the operator can allow it with --allow-origin)",
            )
        return await handler(request)

    return check_origin
