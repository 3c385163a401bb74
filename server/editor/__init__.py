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
from pathlib import Path
from typing import Any

from aiohttp import web

from server.app_keys import CONFIG_KEY, OPENAPI_KEY
from server.config import ServerConfig
from server.editor import comfy_misc, jobs_api, streams_bridge, user_data
from server.editor.frontend import EDITOR_PREFIX, add_frontend_routes
from server.jobs import comfy_routes, ws
from server.openapi import add_api_route

logger = logging.getLogger(__name__)


def user_dir_of(config: ServerConfig) -> Path:
    """--user-dir, else the workspace's user/ (where ComfyUI keeps it), else ./user."""
    if getattr(config, "user_dir", None) is not None:
        return Path(config.user_dir)
    base = config.workspace if config.workspace is not None else Path.cwd()
    return Path(base) / "user"


def setup_routes(app: web.Application) -> None:
    app[user_data.USER_STORE_KEY] = user_data.UserStore(user_dir_of(app[CONFIG_KEY]))
    app[comfy_misc.LOG_BUFFER_KEY] = comfy_misc.LogBuffer()
    api = app[OPENAPI_KEY]

    def add(method: str, path: str, handler: Any, summary: str, bare: bool) -> None:
        """`/api{path}` (and `{path}` when `bare`), documented, and `/comfyui/api{path}` for the page."""
        if bare:
            add_api_route(app, api, method, path, handler, summary, tags=("editor",))
        add_api_route(
            app,
            api,
            method,
            f"/api{path}",
            handler,
            summary,
            tags=("editor",),
            **({"alias_of": f"{method} {path}"} if bare else {}),
        )
        app.router.add_route(method, f"{EDITOR_PREFIX}/api{path}", handler)

    for method, path, handler, summary in (*user_data.ROUTES, *comfy_misc.API_ROUTES):
        add(method, path, handler, summary, bare=True)
    for method, path, handler, summary in (
        *jobs_api.ROUTES,
        *comfy_misc.API_ONLY_ROUTES,
        *streams_bridge.ROUTES,
    ):
        add(method, path, handler, summary, bare=False)
    for method, path, handler, summary in comfy_misc.INTERNAL_ROUTES:
        add_api_route(app, api, method, path, handler, summary, tags=("editor",))
        app.router.add_route(method, f"{EDITOR_PREFIX}{path}", handler)
    # The jobs feature's ComfyUI API, where the page calls it.
    for method, path, handler, _ in comfy_routes.ROUTES:
        app.router.add_route(method, f"{EDITOR_PREFIX}/api{path}", handler)
    app.router.add_get(f"{EDITOR_PREFIX}/ws", ws.websocket_handler)

    add_frontend_routes(app, comfy_misc.web_dirs(app))
    app.on_startup.append(_start)
    app.on_cleanup.append(_cleanup)


async def _start(app: web.Application) -> None:
    logging.getLogger().addHandler(app[comfy_misc.LOG_BUFFER_KEY])


async def _cleanup(app: web.Application) -> None:
    logging.getLogger().removeHandler(app[comfy_misc.LOG_BUFFER_KEY])
