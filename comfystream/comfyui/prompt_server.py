"""A stand-in for ComfyUI's `server.PromptServer` inside a worker.

Nodes (`comfy_extras.nodes_images` and many custom node packages) do `from server import
PromptServer` and call `PromptServer.instance.send_sync(...)` / `send_progress_text(...)`, or
register HTTP routes on `PromptServer.instance.routes` at import time. A worker runs no ComfyUI
server, so these calls go to the running execution's event feed instead (with its `prompt_id`),
and routes are accepted and ignored.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

from aiohttp import web

from comfystream.engine.context import current_context
from comfystream.engine.progress import report_progress_text

logger = logging.getLogger(__name__)


class PromptServer:
    """The parts of ComfyUI's PromptServer that node code reaches for."""

    instance: PromptServer | None = None

    def __init__(self) -> None:
        PromptServer.instance = self
        self.routes = web.RouteTableDef()
        self.app = web.Application()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets: dict[str, Any] = {}
        self.sockets_metadata: dict[str, Any] = {}
        self.supports: list[str] = []
        self.loop = None
        self.prompt_queue = None
        self.number = 0

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        ctx = current_context()
        if ctx is None:
            logger.debug("node event %r outside an execution dropped", event)
            return
        if isinstance(data, dict):
            ctx.emit(event, dict(data))
        else:  # binary events (previews) carry no dict; wrap them so prompt_id can ride along
            ctx.emit(event, {"data": data})

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def send_progress_text(self, text: str, node_id: str | None = None, sid: str | None = None) -> None:
        report_progress_text(text, node_id=node_id)

    def add_on_prompt_handler(self, handler: Any) -> None:
        logger.debug("on_prompt handler %r ignored: a worker receives no ComfyUI /prompt requests", handler)

    def queue_updated(self) -> None:
        pass


def install() -> types.ModuleType:
    """Make `from server import PromptServer` find the stand-in; returns the module that holds it.

    Where a module named `server` is already imported (comfystream's own server package, when a
    spawned worker re-imported its parent's main module), the stand-in is added to it as an
    attribute, since replacing a package in use would break it. A real ComfyUI `server` that
    already has a PromptServer is left alone.
    """
    if PromptServer.instance is None:
        PromptServer()
    existing = sys.modules.get("server")
    if existing is not None:
        if getattr(existing, "PromptServer", None) is None:
            existing.PromptServer = PromptServer  # type: ignore[attr-defined]
        return existing
    module = types.ModuleType("server", __doc__)
    module.PromptServer = PromptServer  # type: ignore[attr-defined]
    sys.modules["server"] = module
    return module
