"""The server's health as pytrickle states it (`GET /health`, `GET /stream/status`, the capacity
registered with an orchestrator)."""

from __future__ import annotations

from aiohttp import web

from server.streams.manager import STREAM_MANAGER_KEY
from server.streams.pipelines import PIPELINE_RESOURCES_KEY


def server_status(app: web.Application) -> str:
    """ERROR when the workers cannot start, LOADING until the default warm worker(s) are ready, then
    OK while a stream runs and IDLE when none does."""
    resources = app.get(PIPELINE_RESOURCES_KEY)
    if resources is not None and resources.error is not None:
        return "ERROR"
    if resources is not None and not resources.ready:
        return "LOADING"
    return "OK" if app[STREAM_MANAGER_KEY].active else "IDLE"
