"""How a room puts its routes on the app (`Route` tables, `add_routes`), and what every handler
shares: a JSON body parsed (bad JSON and failed validation are the error bodies of
`server.http.errors`), a pydantic model answered as JSON."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from comfystream import json_limits
from server.http import errors
from server.http.keys import OPENAPI_KEY
from server.http.openapi import Operation

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


@dataclass(frozen=True)
class Route:
    """One entry of a room's route table: served at `path`, and described in /openapi.json beside it.

    A route without a `summary` is served but not an API operation (a page, an asset, a mount).
    `aliases`: other paths it is served and documented at (ComfyUI answers `/x` and `/api/x`);
    `mounts`: other paths it is served at, undocumented (`/comfyui/api/x`, where the editor calls)."""

    method: str
    path: str
    handler: Handler
    summary: str | None = None
    # status -> a response model, a media type (free-form body), (media type, JSON schema), or None
    responses: dict[int, Any] = field(default_factory=lambda: {200: "application/json"})
    request_model: type[BaseModel] | None = None
    request_required: bool = True
    query: dict[str, str] = field(default_factory=dict)  # name -> description
    tag: str | None = None  # default: the table's
    aliases: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    allow_head: bool = False  # a GET page answers HEAD too (aiohttp's add_get)


@dataclass(frozen=True)
class Static:
    """A folder served under a prefix (pages' scripts and styles)."""

    prefix: str
    folder: Path


def add_routes(app: web.Application, tag: str, table: Iterable[Route | Static]) -> None:
    """Serve every entry of a room's table and describe its API operations in the app's OpenAPI
    registry, all under `tag` unless a route names its own: the one way routes get on the app."""
    registry = app[OPENAPI_KEY]
    for entry in table:
        if isinstance(entry, Static):
            app.router.add_static(entry.prefix, entry.folder)
            continue
        spec = {
            "tags": (entry.tag or tag,),
            "request_model": entry.request_model,
            "request_required": entry.request_required,
            "responses": entry.responses,
            "query": entry.query,
        }
        if entry.allow_head and entry.method == "GET":
            app.router.add_get(entry.path, entry.handler)
        else:
            app.router.add_route(entry.method, entry.path, entry.handler)
        if entry.summary is not None:
            registry.add(Operation(method=entry.method, path=entry.path, summary=entry.summary, **spec))
        for alias in entry.aliases:
            app.router.add_route(entry.method, alias, entry.handler)
            if entry.summary is not None:
                alias_of = f"{entry.method} {entry.path}"
                registry.add(
                    Operation(
                        method=entry.method, path=alias, summary=entry.summary, alias_of=alias_of, **spec
                    )
                )
        for mount in entry.mounts:
            app.router.add_route(entry.method, mount, entry.handler)
