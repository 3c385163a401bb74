"""Requests that end on the client's side: not server errors.

- A client that goes away mid-request (its body cut short, the connection closed while a handler
  reads or answers) is one INFO line, not a 500 with a traceback: the middleware answers 499
  (nginx's "client closed request"; nobody is there to read it).
- A request aiohttp cannot parse (a header line too long, a malformed one) gets aiohttp's own 400;
  its log record ("Error handling request", ERROR, with the parser's traceback) becomes one INFO
  line saying what was wrong.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

logger = logging.getLogger(__name__)

CLIENT_GONE = 499


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def client_gone_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ConnectionResetError as exc:  # (aiohttp's ClientConnectionResetError is one)
        if not _gone(request):
            raise  # a connection of the handler's own (to a worker, a relay): a real failure
        logger.info("%s %s: the client went away mid-request (%s)", request.method, request.path, exc)
        return web.Response(status=CLIENT_GONE)


class _BadRequestRecords(logging.Filter):
    """On aiohttp's server logger: a request it could not parse is the client's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = (
                "bad request from %s: %s",
                (
                    record.args[0] if record.args else "?",
                    " ".join(f"{type(exc).__name__}: {exc.message}".split()),  # (one line)
                ),
            )
            record.exc_info = record.exc_text = None
        elif isinstance(exc, ConnectionResetError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = (
                "client %s went away mid-request",
                (record.args[0] if record.args else "?",),
            )
            record.exc_info = record.exc_text = None
        return True


_FILTER = _BadRequestRecords()


def quiet_client_errors() -> None:
    """Install the filter on aiohttp's server logger (once, whatever the number of apps)."""
    server_logger = logging.getLogger("aiohttp.server")
    if _FILTER not in server_logger.filters:
        server_logger.addFilter(_FILTER)
