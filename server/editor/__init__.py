"""The official ComfyUI editor on this server (`/comfyui/`) and everything it calls that ComfyUI's
server answers: users, settings and userdata on disk (server/editor/user_data.py), `/api/jobs`
(jobs_api.py), features, i18n, extensions, models, templates, logs (comfy_misc.py), and
comfystream's own bridge from the editor to live streams (streams_bridge.py, with the frontend
extension in static/). `setup_routes(app)` is what the app factory calls.

Each ComfyUI route answers where ComfyUI answers it (`/x` and `/api/x`, or `/api/x` only) and under
the editor's own base path `/comfyui` (`/comfyui/api/x`), where the page calls it; the jobs API of
server/jobs (`/prompt`, `/ws`, `/view`, ...) is served there as well."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from server.config import ServerConfig
from server.editor import comfy_misc, jobs_api, live_workflows, streams_bridge, user_data
from server.editor.frontend import EDITOR_PREFIX, frontend_routes
from server.http.keys import CONFIG_KEY
from server.http.routes import Route, add_routes
from server.jobs import comfy_routes, ws

logger = logging.getLogger(__name__)


def user_dir_of(config: ServerConfig) -> Path:
    """--user-dir, else the workspace's user/ (where ComfyUI keeps it), else ./user."""
    if getattr(config, "user_dir", None) is not None:
        return Path(config.user_dir)
    base = config.workspace if config.workspace is not None else Path.cwd()
    return Path(base) / "user"


def _comfy(route: Route) -> Route:
    """As ComfyUI registers it (`/x` and `/api/x`), and at `/comfyui/api/x`, where the page calls."""
    return replace(route, aliases=(f"/api{route.path}",), mounts=(f"{EDITOR_PREFIX}/api{route.path}",))


def _api_only(route: Route) -> Route:
    """At `/api/x` only (and `/comfyui/api/x` for the page)."""
    return replace(route, path=f"/api{route.path}", mounts=(f"{EDITOR_PREFIX}/api{route.path}",))


def _page_only(route: Route) -> Route:
    """Where the page calls it: a route another room serves and documents."""
    return Route(route.method, f"{EDITOR_PREFIX}/api{route.path}", route.handler)


def setup_routes(app: web.Application) -> None:
    app[user_data.USER_STORE_KEY] = user_data.UserStore(user_dir_of(app[CONFIG_KEY]))
    app[comfy_misc.LOG_BUFFER_KEY] = comfy_misc.LogBuffer()
    add_routes(
        app,
        "editor",
        [
            *map(_comfy, (*user_data.ROUTES, *comfy_misc.API_ROUTES)),
            *map(
                _api_only,
                (
                    *jobs_api.ROUTES,
                    *comfy_misc.API_ONLY_ROUTES,
                    *streams_bridge.ROUTES,
                    *live_workflows.ROUTES,
                ),
            ),
            *(replace(r, mounts=(f"{EDITOR_PREFIX}{r.path}",)) for r in comfy_misc.INTERNAL_ROUTES),
            # The jobs room's ComfyUI API, where the page calls it.
            *map(_page_only, comfy_routes.ROUTES),
            Route("GET", f"{EDITOR_PREFIX}/ws", ws.websocket_handler, allow_head=True),
        ],
    )
    add_routes(app, "editor", frontend_routes(comfy_misc.web_dirs(app)))
    app.cleanup_ctx.append(_log_buffer)


async def _log_buffer(app: web.Application) -> AsyncIterator[None]:
    """The server's log lines, kept for the editor's terminal while the app runs."""
    logging.getLogger().addHandler(app[comfy_misc.LOG_BUFFER_KEY])
    yield
    logging.getLogger().removeHandler(app[comfy_misc.LOG_BUFFER_KEY])
