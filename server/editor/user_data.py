"""The editor's per-user storage, as ComfyUI's `app/user_manager.py` and `app/app_settings.py` keep
it: single-user mode (the user `default`), everything on disk under `{user_dir}/default/`:
`comfy.settings.json` (GET/POST /api/settings[/{id}]) and the userdata files the editor saves and
opens (workflows, templates, keybindings: /api/userdata, /api/v2/userdata). Every path a request
names is confined to the user's folder: one that resolves outside it (`..`, an absolute path, a
symlink out) is refused with 403, as ComfyUI does."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from comfystream import json_limits
from server.http.routes import Route

logger = logging.getLogger(__name__)

DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
# Where this server's editor differs from ComfyUI's defaults until the user changes them: the page
# works offline, so it does not ask api.comfy.org for release notes; and ComfyUI's core templates
# are not installed, so a first visit opens the canvas, not an empty template browser.
EDITOR_DEFAULTS: dict[str, Any] = {
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.TutorialCompleted": True,
}
# Made with the user's folder, as a ComfyUI that has saved a workflow, a subgraph and a template
# has them: the page lists them on load, and an absent one is a 404 in its network log.
USER_FOLDERS = ("workflows", "subgraphs")
USER_FILES = {
    "user.css": "/* your CSS for the editor */\n",
    "comfy.templates.json": "[]",
    "workflows/.index.json": '{"favorites": []}',  # the workflows the user bookmarked
}


class PathOutside(ValueError):
    """A requested path that is not inside the user's folder."""


class UserStore:
    """One user's folder (`root`), and the settings file in it."""

    def __init__(self, user_dir: Path):
        self.user_dir = Path(user_dir).resolve()
        self.root = self.user_dir / DEFAULT_USER
        self._ensured = False

    def ensure(self) -> None:
        """The folder with what the page reads on load: `workflows/`, `subgraphs/`, an empty
        `user.css` (the stylesheet the page links; a user's own CSS goes there) and no templates.
        Made on the editor's first request, not at startup: a server nobody edits on writes nothing."""
        if self._ensured:
            return
        self._ensured = True
        logger.info("editor: user data in %s", self.root)
        for name in USER_FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        for name, content in USER_FILES.items():
            if not (self.root / name).exists():
                (self.root / name).write_text(content, encoding="utf-8")

    def path(self, relative: str) -> Path:
        """`relative` inside the user's folder (URL-decoded once more if it still holds `%`, as
        ComfyUI does); PathOutside when it leaves it."""
        if "%" in relative:
            relative = unquote(relative)
        if "\x00" in relative:
            raise PathOutside(relative)
        candidate = (self.root / relative).resolve()
        if candidate != self.root and not candidate.is_relative_to(self.root):
            raise PathOutside(relative)
        return candidate

    def file_info(self, path: Path, relative_to: Path) -> dict[str, Any]:
        st = path.stat()
        return {
            "path": path.relative_to(relative_to).as_posix(),
            "size": st.st_size,
            "modified": st.st_mtime,
            "created": st.st_ctime,
        }

    # -- settings ------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        path = self.root / SETTINGS_FILE
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.error("the editor's settings file is corrupted: %s", path)
            return {}
        return value if isinstance(value, dict) else {}

    def save_settings(self, settings: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / SETTINGS_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(settings, indent=4), encoding="utf-8")
        os.replace(tmp, path)  # a crash mid-write never leaves half a settings file


USER_STORE_KEY = web.AppKey("editor_user_store", UserStore)


def _store(request: web.Request) -> UserStore:
    store = request.app[USER_STORE_KEY]
    store.ensure()
    return store


async def _json(request: web.Request) -> Any:
    try:
        return await request.json(loads=json_limits.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="the body must be JSON") from None


# -- users ---------------------------------------------------------------------------------------


async def get_users(request: web.Request) -> web.Response:
    # Single-user mode: ComfyUI answers where settings live and whether the user's folder exists.
    return web.json_response({"storage": "server", "migrated": _store(request).root.exists()})


async def post_users(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": "This server runs in single-user mode: there is one user, `default`."}, status=400
    )


# -- settings ------------------------------------------------------------------------------------


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response({**EDITOR_DEFAULTS, **_store(request).settings()})


async def get_setting(request: web.Request) -> web.Response:
    return web.json_response({**EDITOR_DEFAULTS, **_store(request).settings()}.get(request.match_info["id"]))


async def post_settings(request: web.Request) -> web.Response:
    body = await _json(request)
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object of settings")
    store = _store(request)
    store.save_settings({**store.settings(), **body})
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    value = await _json(request)
    store = _store(request)
    settings = store.settings()
    settings[request.match_info["id"]] = value
    store.save_settings(settings)
    return web.Response(status=200)


# -- userdata ------------------------------------------------------------------------------------


def _flag(request: web.Request, name: str, default: str = "") -> bool:
    return request.query.get(name, default).lower() == "true"


async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        return web.Response(status=400, text="Directory not provided")
    store = _store(request)
    try:
        path = store.path(directory)
    except PathOutside:
        return web.Response(status=403, text="Invalid directory")
    if not path.is_dir():
        return web.Response(status=404, text="Directory not found")
    recurse, full_info, split = (
        _flag(request, "recurse"),
        _flag(request, "full_info"),
        _flag(request, "split"),
    )
    # As ComfyUI's glob: hidden files and folders (the bookmarks' .index.json) are not listed.
    files = sorted(
        p
        for p in (path.rglob("*") if recurse else path.glob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    out: list[Any] = []
    for f in files:
        if full_info:
            out.append(store.file_info(f, path))
            continue
        rel = f.relative_to(path).as_posix()
        out.append([rel, *rel.split("/")] if split else rel)
    return web.json_response(out)


async def list_userdata_v2(request: web.Request) -> web.Response:
    store = _store(request)
    requested = request.query.get("path", "")
    try:
        target = store.path(requested) if requested else store.root
    except PathOutside:
        return web.Response(status=400, text="Invalid path requested")
    if not target.exists():
        if target == store.root:
            return web.json_response([])
        return web.Response(status=404, text="Requested path not found")
    if not target.is_dir():
        return web.Response(status=400, text="Requested path is not a directory")
    out: list[dict[str, Any]] = []
    for entry in target.rglob("*"):
        rel = entry.relative_to(store.root).as_posix()
        if entry.is_dir():
            out.append({"name": entry.name, "path": rel, "type": "directory"})
        elif entry.is_file():
            st = entry.stat()
            out.append(
                {"name": entry.name, "path": rel, "type": "file", "size": st.st_size, "modified": st.st_mtime}
            )
    out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
    return web.json_response(out)


def _userdata_path(request: web.Request, param: str = "file") -> Path:
    name = request.match_info.get(param, "")
    if not name:
        raise web.HTTPBadRequest()
    try:
        return _store(request).path(name)
    except PathOutside:
        logger.warning("userdata: refused a path outside the user's folder: %r", name)
        raise web.HTTPForbidden() from None


def _written(request: web.Request, path: Path) -> web.Response:
    store = _store(request)
    if _flag(request, "full_info", "false"):
        return web.json_response(store.file_info(path, store.root))
    return web.json_response(path.relative_to(store.root).as_posix())


async def get_userdata(request: web.Request) -> web.StreamResponse:
    path = _userdata_path(request)
    if not path.is_file():
        return web.Response(status=404)
    return web.FileResponse(path)


async def post_userdata(request: web.Request) -> web.Response:
    path = _userdata_path(request)
    overwrite = request.query.get("overwrite", "true") != "false"
    if path.exists() and not overwrite:
        return web.Response(status=409, text="File already exists")
    if path.is_dir() or path == _store(request).root:
        return web.Response(status=400, text="not a file name")
    body = await request.read()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    except OSError as exc:
        logger.warning("userdata: cannot save %s: %s", path, exc)
        return web.Response(status=400, reason="Invalid filename")
    return _written(request, path)


async def delete_userdata(request: web.Request) -> web.Response:
    path = _userdata_path(request)
    if not path.is_file():
        return web.Response(status=404)
    path.unlink()
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    source = _userdata_path(request)
    dest = _userdata_path(request, "dest")
    if not source.is_file():
        return web.Response(status=404)
    overwrite = request.query.get("overwrite", "true") != "false"
    if dest.exists() and not overwrite:
        return web.Response(status=409, text="File already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, dest)
    return _written(request, dest)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/users", get_users, "Users: single-user mode (ComfyUI)"),
    Route(
        "POST",
        "/users",
        post_users,
        "Add a user: refused in single-user mode (ComfyUI)",
        responses={400: None},
    ),
    Route("GET", "/settings", get_settings, "The editor's settings (ComfyUI)"),
    Route("POST", "/settings", post_settings, "Merge settings (ComfyUI)", responses={200: None, 400: None}),
    Route("GET", "/settings/{id}", get_setting, "One setting (ComfyUI)"),
    Route(
        "POST", "/settings/{id}", post_setting, "Set one setting (ComfyUI)", responses={200: None, 400: None}
    ),
    Route(
        "GET",
        "/userdata",
        list_userdata,
        "List the user's files in a folder (ComfyUI)",
        responses={200: "application/json", 400: None, 403: None, 404: None},
    ),
    Route(
        "GET",
        "/v2/userdata",
        list_userdata_v2,
        "List the user's files and folders (ComfyUI)",
        responses={200: "application/json", 400: None, 403: None, 404: None},
    ),
    Route(
        "GET",
        "/userdata/{file}",
        get_userdata,
        "One of the user's files (ComfyUI)",
        responses={200: None, 400: None, 403: None, 404: None},
    ),
    Route(
        "POST",
        "/userdata/{file}",
        post_userdata,
        "Save one of the user's files (ComfyUI)",
        responses={200: "application/json", 400: None, 403: None, 409: None},
    ),
    Route(
        "DELETE",
        "/userdata/{file}",
        delete_userdata,
        "Delete one of the user's files (ComfyUI)",
        responses={204: None, 400: None, 403: None, 404: None},
    ),
    Route(
        "POST",
        "/userdata/{file}/move/{dest}",
        move_userdata,
        "Move one of the user's files (ComfyUI)",
        responses={200: "application/json", 400: None, 403: None, 404: None, 409: None},
    ),
)
