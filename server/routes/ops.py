"""Operations: `GET /health`, `GET /metrics` (Prometheus), `GET /openapi.json`."""

from __future__ import annotations

from importlib import metadata

from aiohttp import web

from server.app_keys import METRICS_KEY, NODE_REGISTRY_KEY, OPENAPI_KEY, STREAM_MANAGER_KEY, WORKSPACE_KEY
from server.metrics import CONTENT_TYPE
from server.models import HealthResponse
from server.openapi import route_adder
from server.routes._util import respond
from server.workspace import load_errors

TITLE = "comfystream"
DESCRIPTION = "ComfyUI workflows on live video: trickle streams, WebRTC, workflow jobs."


def version() -> str:
    try:
        return metadata.version("comfystream")
    except metadata.PackageNotFoundError:
        return "0.0.0"


async def health(request: web.Request) -> web.Response:
    manager = request.app[STREAM_MANAGER_KEY]
    registry = request.app[NODE_REGISTRY_KEY]
    errors = load_errors(registry, request.app[WORKSPACE_KEY])
    return respond(
        HealthResponse(
            status="degraded" if errors else "ok",
            version=version(),
            streams_active=len(manager.active),
            max_streams=manager.config.max_streams,
            node_types=len(registry),
            node_load_errors=errors,
        )
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY].document(TITLE, version(), DESCRIPTION))


def setup_routes(app: web.Application) -> None:
    route = route_adder(app, app[OPENAPI_KEY], tags=("operations",))
    route("GET", "/health", health, "Liveness and a summary", responses={200: HealthResponse})
    route("GET", "/metrics", metrics, "Prometheus metrics", responses={200: "text/plain"})
    route("GET", "/openapi.json", openapi, "This document", responses={200: "application/json"})
