"""Operations: `GET /health` (pytrickle's LOADING | IDLE | OK | ERROR), `/version`,
`/app-version`, `/hardware/info`, `/hardware/stats` (pytrickle's shapes), `GET /metrics`
(Prometheus), `GET /openapi.json`."""

from __future__ import annotations

import asyncio
import os
from importlib import metadata

from aiohttp import web
from pydantic import BaseModel, Field

from server.http.keys import CONFIG_KEY, METRICS_KEY, NODE_REGISTRY_KEY, OPENAPI_KEY, WORKSPACE_KEY
from server.http.routes import Route, add_routes, respond
from server.livepeer.hardware import INFO_KEYS, STATS_KEYS, placed_gpus, query_gpus, shaped
from server.metrics import CONTENT_TYPE
from server.nodes.workspace import load_errors
from server.streams.health import server_status
from server.streams.manager import STREAM_MANAGER_KEY
from server.streams.models import HealthStatus
from server.streams.pipelines import PIPELINE_RESOURCES_KEY

TITLE = "comfystream"
DESCRIPTION = "ComfyUI workflows on live video: trickle streams, WebRTC, workflow jobs."


class HealthResponse(BaseModel):
    """pytrickle's `{"status": LOADING | IDLE | OK | ERROR}` and our summary beside it."""

    status: HealthStatus = Field(
        ...,
        description="LOADING: the warm worker(s) are not ready yet; IDLE: ready, no stream; "
        "OK: streams run; ERROR: the workers cannot start",
    )
    degraded: bool = Field(False, description="some custom node packages failed to load")
    error_message: str | None = None
    version: str
    streams_active: int
    max_streams: int
    node_types: int
    node_load_errors: dict[str, str] = Field(default_factory=dict)


def version() -> str:
    try:
        return metadata.version("comfystream")
    except metadata.PackageNotFoundError:
        return "0.0.0"


async def health(request: web.Request) -> web.Response:
    manager = request.app[STREAM_MANAGER_KEY]
    registry = request.app[NODE_REGISTRY_KEY]
    errors = load_errors(registry, request.app[WORKSPACE_KEY])
    resources = request.app.get(PIPELINE_RESOURCES_KEY)
    return respond(
        HealthResponse(
            status=server_status(request.app),  # type: ignore[arg-type]
            degraded=bool(errors),
            error_message=getattr(resources, "error", None),
            version=version(),
            streams_active=len(manager.active),
            max_streams=manager.config.max_streams,
            node_types=len(registry),
            node_load_errors=errors,
        )
    )


def _pipeline() -> str:
    return os.environ.get("PIPELINE", "byoc")  # pytrickle's default


async def version_info(request: web.Request) -> web.Response:
    """pytrickle's Version: the pipeline kind, the capability's name, the package's version."""
    return web.json_response(
        {"pipeline": _pipeline(), "model_id": request.app[CONFIG_KEY].pipeline_name, "version": version()}
    )


async def app_version(request: web.Request) -> web.Response:
    return web.json_response({"version": version()})


async def _gpus(request: web.Request) -> dict[str, dict]:
    """The GPUs the workers are placed on, with their worker counts ({} on a CPU machine)."""
    resources = request.app.get(PIPELINE_RESOURCES_KEY)
    if resources is None:
        return {}
    backend = resources.backend
    placer = backend.placer
    gpus = await asyncio.to_thread(query_gpus) if placer.gpus else []
    return placed_gpus(gpus, list(placer.gpus), backend.gpu_load())


async def hardware_info(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "pipeline": _pipeline(),
            "model_id": request.app[CONFIG_KEY].pipeline_name,
            "gpu_info": shaped(await _gpus(request), INFO_KEYS),
        }
    )


async def hardware_stats(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "pipeline": _pipeline(),
            "model_id": request.app[CONFIG_KEY].pipeline_name,
            "gpu_stats": shaped(await _gpus(request), STATS_KEYS),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY].document(TITLE, version(), DESCRIPTION))


JSON = {200: "application/json"}
ROUTES = (
    Route(
        "GET",
        "/health",
        health,
        "Health: LOADING, IDLE, OK or ERROR, and a summary",
        responses={200: HealthResponse},
    ),
    Route(
        "GET", "/version", version_info, "Pipeline, capability name (model_id) and version", responses=JSON
    ),
    Route("GET", "/app-version", app_version, "The application's version", responses=JSON),
    Route("GET", "/hardware/info", hardware_info, "The GPUs workers are placed on", responses=JSON),
    Route(
        "GET",
        "/hardware/stats",
        hardware_stats,
        "GPU memory and utilization, workers per GPU",
        responses=JSON,
    ),
    Route("GET", "/metrics", metrics, "Prometheus metrics", responses={200: "text/plain"}),
    Route("GET", "/openapi.json", openapi, "This document", responses=JSON),
)


def setup_routes(app: web.Application) -> None:
    add_routes(app, "operations", ROUTES)
