"""The stream API's refusals: the stream manager's, the workers' and the prompt checks' exceptions
answered as 400 / 404 / 409 / 503 bodies, each counted in `requests_rejected`."""

from __future__ import annotations

import functools

from aiohttp import web
from pydantic import ValidationError

from comfystream.engine import PromptValidationError
from comfystream.pipeline.backend import NoGpuRoom, WorkerError
from comfystream.prompts import PromptFormatError
from server.http import errors
from server.http.keys import CONFIG_KEY, METRICS_KEY
from server.http.routes import Handler
from server.nodes.validation import PromptRejected
from server.streams.types import AtCapacity, NotNow, StreamExists, StreamNotFound


def api_handler(handler: Handler) -> Handler:
    """Maps the stream manager's exceptions to 400/404/409/503 bodies and counts rejections."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                request.app[METRICS_KEY].requests_rejected.labels(str(exc.status)).inc()
            raise
        except Exception as exc:
            http = to_http_error(exc, request.app)
            if http is None:
                raise
            request.app[METRICS_KEY].requests_rejected.labels(str(http.status)).inc()
            raise http from None

    return wrapped


def to_http_error(exc: Exception, app: web.Application) -> web.HTTPException | None:
    """The HTTP error a request error is answered with (None: not a request error)."""
    if isinstance(exc, StreamNotFound):
        return errors.not_found(str(exc.args[0]) if exc.args else "")
    if isinstance(exc, StreamExists):
        return errors.conflict(str(exc.args[0]))
    if isinstance(exc, AtCapacity):
        return errors.at_capacity(app[CONFIG_KEY].max_streams)
    if isinstance(exc, NoGpuRoom):
        return errors.error_response(web.HTTPServiceUnavailable, "No GPU has room", str(exc))
    if isinstance(exc, NotNow):  # e.g. a restart while a WebRTC stream's prompts are stopped
        return errors.error_response(web.HTTPConflict, "Not possible now", str(exc))
    if isinstance(exc, PromptRejected):
        return errors.prompt_validation_failed(exc.result, exc.index, exc.count)
    if isinstance(exc, PromptValidationError):  # the worker's own check (should the server's have passed)
        return errors.prompt_validation_failed(exc.result)
    if isinstance(exc, PromptFormatError):
        return errors.prompt_format_failed(exc)
    if isinstance(exc, ValidationError):
        return errors.request_validation_failed(exc)
    if isinstance(exc, WorkerError):  # e.g. an update meeting a worker that is being replaced, and failing
        return errors.error_response(web.HTTPServiceUnavailable, "Worker not available", str(exc))
    return None
