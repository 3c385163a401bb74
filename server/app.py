"""The aiohttp application factory. Feature modules add their routes with `setup_routes(app)` and
share the server's state through the typed keys of `server.http.keys`."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from aiohttp import web

from server.config import ServerConfig
from server.events import EventBus
from server.http.client_gone import client_gone_middleware, quiet_client_errors
from server.http.keys import (
    CONFIG_KEY,
    EVENT_BUS_KEY,
    METRICS_KEY,
    NODE_REGISTRY_KEY,
    OPENAPI_KEY,
    STREAM_MANAGER_KEY,
    WORKSPACE_KEY,
)
from server.http.openapi import OpenApiRegistry
from server.http.origin_check import OriginPolicy, documented_responses, origin_middleware
from server.metrics import ServerMetrics
from server.nodes.workspace import NodeSetup, load_nodes
from server.streams.manager import PipelineFactory, StreamManager
from server.streams.pipelines import PipelineResources

logger = logging.getLogger(__name__)

# Modules whose `setup_routes(app)` the app calls, in order. Add a feature by adding its module here.
FEATURE_MODULES: tuple[str, ...] = (
    "server.ops",
    "server.streams.routes",
    "server.webrtc.routes",
    "server.dashboard.routes",
    "server.jobs",
    "server.editor",  # after server.jobs: it serves the jobs API under the editor's path too
)

PIPELINE_RESOURCES_KEY = web.AppKey("pipeline_resources", PipelineResources)
# server.livepeer.registration.Registrar, when the server registers with an orchestrator (--orch-url)
REGISTRAR_KEY: web.AppKey[Any] = web.AppKey("registrar", object)
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
    for name in FEATURE_MODULES:
        importlib.import_module(name).setup_routes(app)
    if config.relay:
        from comfystream.trickle import TrickleRelay, add_relay_routes

        relay = TrickleRelay(
            max_segment_bytes=config.relay_max_segment_bytes, max_channel_bytes=config.relay_max_channel_bytes
        )
        add_relay_routes(app, prefix="/trickle", relay=relay)
    if config.registration is not None:
        from server.livepeer.registration import Registrar

        app[REGISTRAR_KEY] = Registrar(config.registration, lambda: _capacity(app))
    if config.auth_token:
        from server.http.auth import add_login_routes, auth_middleware

        # A mounted relay stays open: trickle publishers and subscribers send no Authorization.
        app.middlewares.append(auth_middleware(config.auth_token, ("/trickle/",) if config.relay else ()))
        add_login_routes(app, config.auth_token)  # the pages' way in: a session cookie
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


async def _on_startup(app: web.Application) -> None:
    await app[PIPELINE_RESOURCES_KEY].start()
    registrar = app.get(REGISTRAR_KEY)
    if registrar is not None:
        registrar.start()  # in the background: an orchestrator that is down never holds up the server


def _capacity(app: web.Application) -> int:
    """What the orchestrator may route here: the streams this server runs at once (each in its own
    worker process); none while the workers cannot start."""
    from server.ops import server_status

    return 0 if server_status(app) == "ERROR" else app[CONFIG_KEY].max_streams


async def _on_shutdown(app: web.Application) -> None:
    # Streams stop first (each frees its worker), then the shared workers and the warm pool go.
    await app[STREAM_MANAGER_KEY].stop_all("server shutting down")


async def _on_cleanup(app: web.Application) -> None:
    registrar = app.get(REGISTRAR_KEY)
    if registrar is not None:
        await registrar.close()
    await app[PIPELINE_RESOURCES_KEY].close()
