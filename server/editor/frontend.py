"""The official ComfyUI editor (PyPI `comfyui-frontend-package`, pinned in pyproject.toml) served at
`/comfyui/`: its index page, its static files, a stylesheet for `user.css`, and the frontend
extensions of custom nodes (`/comfyui/extensions/{package}/...`) and of comfystream itself.

The page takes its API base from its own path (`location.pathname` less its last part), so it calls
`/comfyui/api/...`, `/comfyui/ws` and `/comfyui/internal/...`: `server/editor/__init__.py` serves
the API there too."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from server.editor import live_workflows
from server.http.routes import Route, Static

logger = logging.getLogger(__name__)

EDITOR_PREFIX = "/comfyui"
# comfystream's own frontend extension (server/editor/static), served as a custom node's would be.
OWN_EXTENSION = "comfystream"
OWN_EXTENSION_DIR = Path(__file__).resolve().parent / "static"
NO_STORE = {"Cache-Control": "no-store, must-revalidate"}


def frontend_root() -> Path | None:
    """The installed frontend package's static folder (None when the package is missing)."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    return root if (root / "index.html").is_file() else None


def frontend_version() -> str:
    try:
        from importlib.metadata import version

        return version("comfyui-frontend-package")
    except Exception:
        return ""


def extension_scripts() -> list[str]:
    """The frontend's own extension scripts and comfystream's, as URLs relative to the API base
    (ComfyUI lists its web root's `extensions/**/*.js`; the frontend skips its `core` ones)."""
    scripts: list[str] = []
    root = frontend_root()
    if root is not None and (root / "extensions").is_dir():
        scripts += [f"/{p.relative_to(root).as_posix()}" for p in sorted((root / "extensions").rglob("*.js"))]
    scripts += [
        f"/extensions/{OWN_EXTENSION}/{p.relative_to(OWN_EXTENSION_DIR).as_posix()}"
        for p in sorted(OWN_EXTENSION_DIR.rglob("*.js"))
    ]
    return scripts


async def redirect_to_editor(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"{EDITOR_PREFIX}/")


def _file(path: Path, headers: dict[str, str] | None = None):
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path, headers=headers)

    return serve


async def legacy_user_css(request: web.Request) -> web.Response:
    # The page links `user.css` beside itself (ComfyUI's old place for it) and `api/userdata/user.css`
    # (the user's folder, where a user's own CSS goes): this one is always empty.
    return web.Response(text="", content_type="text/css", headers=NO_STORE)


async def core_templates(request: web.Request) -> web.Response:
    """The template browser's "core" templates. ComfyUI's own (PyPI `comfyui-workflow-templates`)
    are not a dependency here (most need models); in their place, comfystream's live-video ones
    (server/editor/live_workflows.py), in every locale. `index_logo.json` maps logos: none."""
    name = request.match_info["name"]
    if name == "index_logo.json":
        return web.json_response({})
    if name.startswith("index") and name.endswith(".json"):
        return web.json_response(live_workflows.template_index())
    stem, _, ext = name.rpartition(".")
    if ext == "json" and stem in live_workflows.BY_NAME:
        return web.json_response(live_workflows.ui_workflow(live_workflows.BY_NAME[stem].steps))
    if ext == "png" and stem.endswith("-1") and stem[:-2] in live_workflows.BY_NAME:
        png = live_workflows.thumbnail_png(stem[:-2])
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "max-age=3600"})
    return web.Response(status=404)


async def editor_missing(request: web.Request) -> web.Response:
    return web.Response(
        status=503,
        text="The ComfyUI editor is not installed: pip install comfyui-frontend-package (see README).",
    )


def frontend_routes(web_dirs: dict[str, str]) -> list[Route | Static]:
    """The editor page, its assets, and the custom nodes' frontend extensions (`web_dirs`)."""
    root = frontend_root()
    table: list[Route | Static] = [Route("GET", EDITOR_PREFIX, redirect_to_editor, allow_head=True)]
    if root is None:
        logger.warning("comfyui-frontend-package is not installed: the editor at %s/ is off", EDITOR_PREFIX)
        table.append(Route("GET", f"{EDITOR_PREFIX}/", editor_missing, allow_head=True))
        return table
    table += [
        Route("GET", f"{EDITOR_PREFIX}/", _file(root / "index.html", NO_STORE), allow_head=True),
        Route("GET", f"{EDITOR_PREFIX}/user.css", legacy_user_css, allow_head=True),
        Route("GET", f"{EDITOR_PREFIX}/templates/{{name}}", core_templates, allow_head=True),
    ]
    # The page's favicons are the URLs it builds from the site root, not from its own path.
    favicons = root / "assets" / "images" / "favicon_progress_16x16"
    if favicons.is_dir():
        table.append(Static("/assets/images/favicon_progress_16x16", favicons))
    if (root / "assets" / "favicon.ico").is_file():
        table.append(
            Route("GET", "/assets/favicon.ico", _file(root / "assets" / "favicon.ico"), allow_head=True)
        )
    table.append(Static(f"{EDITOR_PREFIX}/extensions/{OWN_EXTENSION}", OWN_EXTENSION_DIR))
    table += [
        Static(f"{EDITOR_PREFIX}/extensions/{name}", Path(folder))
        for name, folder in sorted(web_dirs.items())
        if name != OWN_EXTENSION
    ]
    table.append(Static(EDITOR_PREFIX, root))
    logger.info("the ComfyUI editor (frontend %s) is at %s/", frontend_version() or "?", EDITOR_PREFIX)
    return table
