"""The aiohttp application factory: the one place that wires the rooms together. Each room adds its
routes with its `setup_routes(app)` and keeps its state under its own typed key (the shared ones
are in `server.http.keys`); every start is paired with its stop in `app.cleanup_ctx`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from comfystream.trickle import TrickleRelay, add_relay_routes
from server import editor, jobs, ops
from server.config import ServerConfig
from server.dashboard import routes as dashboard_routes
from server.events import EventBus
from server.http.auth import add_login_routes, auth_middleware
from server.http.client_gone import client_gone_middleware, quiet_client_errors
from server.http.keys import (
    CONFIG_KEY,
    EVENT_BUS_KEY,
    METRICS_KEY,
    NODE_REGISTRY_KEY,
    OPENAPI_KEY,
    WORKSPACE_KEY,
)
from server.http.openapi import OpenApiRegistry
from server.http.origin_check import OriginPolicy, documented_responses, origin_middleware
from server.livepeer.registration import REGISTRAR_KEY, Registrar
from server.metrics import ServerMetrics
from server.nodes.workspace import NodeSetup, load_nodes
from server.streams import routes as stream_routes
from server.streams.health import server_status
from server.streams.manager import STREAM_MANAGER_KEY, PipelineFactory, StreamManager
from server.streams.pipelines import PIPELINE_RESOURCES_KEY, PipelineResources
from server.webrtc import routes as webrtc_routes

logger = logging.getLogger(__name__)

# Each room's `setup_routes(app)`, in order. Add a feature by adding its room here.
FEATURES = (
    ops.setup_routes,
    stream_routes.setup_routes,
    webrtc_routes.setup_routes,
    dashboard_routes.setup_routes,
    jobs.setup_routes,
    editor.setup_routes,  # after jobs: it serves the jobs API under the editor's path too
)

CLIENT_MAX_SIZE = 32 * 1024**2  # prompts with embedded images can be large


def create_app(
    config: ServerConfig | None = None,
    *,
    registry: Any = None,
    pipeline_factory: PipelineFactory | None = None,
) -> web.Application:
    """The server's application. `registry` and `pipeline_factory` default to the engine's registry
    (built-in and custom nodes) and the worker-backed pipelines; tests and embedders may pass theirs."""
    config = config or ServerConfig()
    app = web.Application(
        client_max_size=CLIENT_MAX_SIZE,
        middlewares=[client_gone_middleware, origin_middleware(OriginPolicy(config.allowed_origins))],
    )
    quiet_client_errors()
    app[CONFIG_KEY] = config
    app[OPENAPI_KEY] = OpenApiRegistry()
    app[OPENAPI_KEY].common_responses.append(documented_responses)
    app[EVENT_BUS_KEY] = EventBus()
    app[METRICS_KEY] = ServerMetrics()
    nodes = NodeSetup(registry) if registry is not None else load_nodes(config)
    app[NODE_REGISTRY_KEY] = nodes.registry
    app[WORKSPACE_KEY] = nodes.workspace
    resources = PipelineResources(config)
    app[PIPELINE_RESOURCES_KEY] = resources
    app[STREAM_MANAGER_KEY] = StreamManager(
        config,
        app[NODE_REGISTRY_KEY],
        pipeline_factory or resources.create_pipeline,
        app[EVENT_BUS_KEY],
        app[METRICS_KEY],
    )
    # Registered before the features': the workers are up before any feature starts, and
    # stopped after every feature has stopped (cleanup_ctx unwinds in reverse).
    app.cleanup_ctx.append(_worker_backend)
    for setup_routes in FEATURES:
        setup_routes(app)
    if config.relay:
        relay = TrickleRelay(
            max_segment_bytes=config.relay_max_segment_bytes, max_channel_bytes=config.relay_max_channel_bytes
        )
        add_relay_routes(app, prefix="/trickle", relay=relay)
    if config.registration is not None:
        app[REGISTRAR_KEY] = Registrar(config.registration, lambda: _capacity(app))
        app.cleanup_ctx.append(_registration)
    if config.auth_token:
        # A mounted relay stays open: trickle publishers and subscribers send no Authorization.
        app.middlewares.append(auth_middleware(config.auth_token, ("/trickle/",) if config.relay else ()))
        add_login_routes(app, config.auth_token)  # the pages' way in: a session cookie
    # Not a cleanup: streams stop while the server still serves (a stream's channels may be on
    # its own relay), before aiohttp closes the connections; each frees its worker.
    app.on_shutdown.append(_stop_streams)
    return app


async def _worker_backend(app: web.Application) -> AsyncIterator[None]:
    resources = app[PIPELINE_RESOURCES_KEY]
    try:
        await resources.start()
        yield
    finally:
        await resources.close()  # also after a failed start: what did spawn is stopped


async def _registration(app: web.Application) -> AsyncIterator[None]:
    registrar = app[REGISTRAR_KEY]
    registrar.start()  # in the background: an orchestrator that is down never holds up the server
    yield
    await registrar.close()


def _capacity(app: web.Application) -> int:
    """What the orchestrator may route here: the streams this server runs at once (each in its own
    worker process); none while the workers cannot start."""
    return 0 if server_status(app) == "ERROR" else app[CONFIG_KEY].max_streams


async def _stop_streams(app: web.Application) -> None:
    await app[STREAM_MANAGER_KEY].stop_all("server shutting down")
