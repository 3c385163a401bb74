"""Helpers the stream routes share: body parsing into the error bodies of `server.errors`, domain
exceptions to HTTP statuses, JSON responses from pydantic models."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from comfystream import json_limits
from comfystream.engine import PromptValidationError
from comfystream.pipeline.backend import NoGpuRoom, WorkerError
from comfystream.prompts import PromptFormatError
from server import errors
from server.app_keys import CONFIG_KEY, METRICS_KEY
from server.prompt_validation import PromptRejected
from server.stream_types import AtCapacity, NotNow, StreamExists, StreamNotFound

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def json_body(request: web.Request, *, required: bool = True) -> Any:
    """The parsed JSON body; an absent body is `{}` unless `required`. Bad JSON: 400."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise errors.invalid_json(ValueError("the request body is empty"))
        return {}
    try:
        return json_limits.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.invalid_json(exc) from None


def parse(model: type[M], data: Any) -> M:
    """`data` validated as `model`; a body that is not an object, or fails, is a 400."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.request_validation_failed(exc) from None


def respond(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


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
