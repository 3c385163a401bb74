"""What every handler shares: a JSON body parsed (bad JSON and failed validation are the error bodies
of `server.http.errors`), a pydantic model answered as JSON."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from comfystream import json_limits
from server.http import errors

M = TypeVar("M", bound=BaseModel)


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
