"""Typed keys for the state every feature module shares on the aiohttp application."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.config import ServerConfig
from server.events import EventBus
from server.http.openapi import OpenApiRegistry
from server.metrics import ServerMetrics

CONFIG_KEY = web.AppKey("config", ServerConfig)
# comfystream.engine.NodeRegistry: the node types prompts are validated against in this process.
NODE_REGISTRY_KEY: web.AppKey[Any] = web.AppKey("node_registry", object)
EVENT_BUS_KEY = web.AppKey("event_bus", EventBus)
METRICS_KEY = web.AppKey("metrics", ServerMetrics)
OPENAPI_KEY = web.AppKey("openapi", OpenApiRegistry)
# comfystream.comfyui.WorkspaceInfo of the --workspace loaded into the node registry; None without one.
WORKSPACE_KEY: web.AppKey[Any] = web.AppKey("workspace", object)
