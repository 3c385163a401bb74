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

from server.config import ServerConfig
from server.editor import comfy_misc, jobs_api, live_workflows, streams_bridge, user_data
from server.editor.frontend import EDITOR_PREFIX, add_frontend_routes
from server.http.keys import CONFIG_KEY, OPENAPI_KEY
from server.http.openapi import add_api_route
from server.jobs import comfy_routes, ws

logger = logging.getLogger(__name__)


def user_dir_of(config: ServerConfig) -> Path:
    """--user-dir, else the workspace's user/ (where ComfyUI keeps it), else ./user."""
    if getattr(config, "user_dir", None) is not None:
        return Path(config.user_dir)
    base = config.workspace if config.workspace is not None else Path.cwd()
    return Path(base) / "user"


J = "application/json"
# The statuses each editor route answers, for the OpenAPI document (schemathesis checks them; the 403
# of a foreign Origin is added by server.http.origin_check). A non-200 answer's body is left undescribed.
RESPONSES: dict[tuple[str, str], dict[int, Any]] = {
    ("GET", "/users"): {200: J},
    ("POST", "/users"): {400: None},
    ("GET", "/settings"): {200: J},
    ("POST", "/settings"): {200: None, 400: None},
    ("GET", "/settings/{id}"): {200: J},
    ("POST", "/settings/{id}"): {200: None, 400: None},
    ("GET", "/userdata"): {200: J, 400: None, 403: None, 404: None},
    ("GET", "/v2/userdata"): {200: J, 400: None, 403: None, 404: None},
    ("GET", "/userdata/{file}"): {200: None, 400: None, 403: None, 404: None},
    ("POST", "/userdata/{file}"): {200: J, 400: None, 403: None, 409: None},
    ("DELETE", "/userdata/{file}"): {204: None, 400: None, 403: None, 404: None},
    ("POST", "/userdata/{file}/move/{dest}"): {200: J, 400: None, 403: None, 404: None, 409: None},
    ("GET", "/models/{folder}"): {200: J, 404: None},
    ("GET", "/experiment/models/{folder}"): {200: J, 404: None},
    ("GET", "/view_metadata/{folder_name}"): {200: J, 404: None},
    ("GET", "/workflow_templates/{package}/{file:.+}"): {200: None, 404: None},
    ("GET", "/global_subgraphs/{id}"): {200: J, 404: None},
    ("POST", "/free"): {200: None},
    ("PATCH", "/internal/logs/subscribe"): {200: None, 400: None},
    ("GET", "/internal/files/{directory_type}"): {200: J, 400: None},
    ("GET", "/jobs"): {200: J, 400: None},
    ("POST", "/jobs/cancel"): {200: J, 400: None},
    ("GET", "/jobs/{job_id:(?!cancel$)[^/]+}"): {200: J, 404: None},
    ("POST", "/jobs/{job_id}/cancel"): {200: J},
    ("POST", "/comfystream/streams/{id}/prompt"): {200: J, 400: None, 404: None, 503: None},
}


def _responses(method: str, path: str) -> dict[int, Any]:
    return RESPONSES.get((method, path), {200: J})


def setup_routes(app: web.Application) -> None:
    app[user_data.USER_STORE_KEY] = user_data.UserStore(user_dir_of(app[CONFIG_KEY]))
    app[comfy_misc.LOG_BUFFER_KEY] = comfy_misc.LogBuffer()
    api = app[OPENAPI_KEY]

    def add(method: str, path: str, handler: Any, summary: str, bare: bool) -> None:
        """`/api{path}` (and `{path}` when `bare`), documented, and `/comfyui/api{path}` for the page."""
        responses = _responses(method, path)
        if bare:
            add_api_route(app, api, method, path, handler, summary, tags=("editor",), responses=responses)
        add_api_route(
            app,
            api,
            method,
            f"/api{path}",
            handler,
            summary,
            tags=("editor",),
            responses=responses,
            **({"alias_of": f"{method} {path}"} if bare else {}),
        )
        app.router.add_route(method, f"{EDITOR_PREFIX}/api{path}", handler)

    for method, path, handler, summary in (*user_data.ROUTES, *comfy_misc.API_ROUTES):
        add(method, path, handler, summary, bare=True)
    for method, path, handler, summary in (
        *jobs_api.ROUTES,
        *comfy_misc.API_ONLY_ROUTES,
        *streams_bridge.ROUTES,
        *live_workflows.ROUTES,
    ):
        add(method, path, handler, summary, bare=False)
    for method, path, handler, summary in comfy_misc.INTERNAL_ROUTES:
        add_api_route(
            app, api, method, path, handler, summary, tags=("editor",), responses=_responses(method, path)
        )
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
