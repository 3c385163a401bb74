"""Operations: `GET /health`, `GET /metrics` (Prometheus), `GET /openapi.json`."""

from __future__ import annotations

from importlib import metadata

from aiohttp import web

from server.app_keys import METRICS_KEY, NODE_REGISTRY_KEY, OPENAPI_KEY, STREAM_MANAGER_KEY
from server.metrics import CONTENT_TYPE
from server.models import HealthResponse
from server.openapi import add_api_route
from server.routes._util import respond

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
    load_errors = dict(getattr(registry, "load_errors", {}) or {})
    return respond(
        HealthResponse(
            status="degraded" if load_errors else "ok",
            version=version(),
            streams_active=len(manager.active),
            max_streams=manager.config.max_streams,
            node_types=len(registry),
            node_load_errors={str(k): str(v) for k, v in load_errors.items()},
        )
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY].document(TITLE, version(), DESCRIPTION))


def setup_routes(app: web.Application) -> None:
    api = app[OPENAPI_KEY]
    add_api_route(
        app,
        api,
        "GET",
        "/health",
        health,
        "Liveness and a summary",
        tags=("operations",),
        responses={200: HealthResponse},
    )
    add_api_route(
        app,
        api,
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics",
        tags=("operations",),
        responses={200: "text/plain"},
    )
    add_api_route(
        app,
        api,
        "GET",
        "/openapi.json",
        openapi,
        "This document",
        tags=("operations",),
        responses={200: "application/json"},
    )
