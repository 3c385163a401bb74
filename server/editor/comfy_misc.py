"""The rest of what ComfyUI's server answers the editor, with ComfyUI's shapes: server features,
translations, frontend extensions (the frontend's own, custom nodes' `WEB_DIRECTORY`, comfystream's),
embeddings and models (from the workspace's `folder_paths` when there is one), custom nodes' example
workflows, global subgraphs, `/free`, `/view_metadata`, and the `/internal/*` routes (logs, folder
paths, files)."""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import struct
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from comfystream import json_limits
from server.editor.frontend import extension_scripts
from server.http.keys import CONFIG_KEY, NODE_REGISTRY_KEY
from server.http.routes import Route
from server.jobs.settings import JOB_SETTINGS_KEY
from server.jobs.ws import SERVER_FEATURE_FLAGS

logger = logging.getLogger(__name__)

EXAMPLE_WORKFLOW_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
# Model folders ComfyUI leaves out of /experiment/models.
MODEL_FOLDERS_HIDDEN = ("configs", "custom_nodes")


def folder_paths() -> Any:
    """ComfyUI's `folder_paths` when this process loaded a workspace (--workspace), else None."""
    return sys.modules.get("folder_paths")


# -- logs ----------------------------------------------------------------------------------------


class LogBuffer(logging.Handler):
    """The server's last log lines, for /internal/logs (ComfyUI's app.logger keeps the same)."""

    def __init__(self, size: int = 300):
        super().__init__(logging.INFO)
        self.entries: collections.deque[dict[str, str]] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # a log record that cannot be formatted is not the page's problem
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        # logging.Handler.handle() holds self.lock around emit(): records from any thread append safely.
        self.entries.append({"t": f"{stamp}.{int(record.msecs):03d}", "m": line})

    def snapshot(self) -> list[dict[str, str]]:
        self.acquire()
        try:
            return list(self.entries)
        finally:
            self.release()


LOG_BUFFER_KEY = web.AppKey("editor_log_buffer", LogBuffer)


async def get_logs(request: web.Request) -> web.Response:
    entries = request.app[LOG_BUFFER_KEY].snapshot()
    return web.json_response("".join(f"{e['t']} - {e['m']}" for e in entries))


async def get_raw_logs(request: web.Request) -> web.Response:
    size = shutil.get_terminal_size((80, 24))
    return web.json_response(
        {
            "entries": request.app[LOG_BUFFER_KEY].snapshot(),
            "size": {"cols": size.columns, "rows": size.lines},
        }
    )


async def subscribe_logs(request: web.Request) -> web.Response:
    # Live log lines over /ws are ComfyUI's terminal panel; the panel reads /internal/logs/raw here.
    try:
        await request.json(loads=json_limits.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.Response(status=400)
    return web.Response(status=200)


async def get_folder_paths(request: web.Request) -> web.Response:
    fp = folder_paths()
    if fp is not None:
        return web.json_response({k: v[0] for k, v in fp.folder_names_and_paths.items()})
    settings = request.app[JOB_SETTINGS_KEY]
    return web.json_response({"input": [str(settings.input_dir)], "output": [str(settings.output_dir)]})


async def get_files(request: web.Request) -> web.Response:
    kind = request.match_info["directory_type"]
    settings = request.app[JOB_SETTINGS_KEY]
    folders = {"input": settings.input_dir, "output": settings.output_dir, "temp": settings.temp_dir}
    if kind not in folders:
        return web.json_response({"error": "Invalid directory type"}, status=400)
    folder = folders[kind]
    entries = [e for e in os.scandir(folder) if e.is_file()] if folder.is_dir() else []
    entries.sort(key=lambda e: -e.stat().st_mtime)
    return web.json_response([e.name for e in entries])


# -- server features, translations, extensions ---------------------------------------------------


async def get_features(request: web.Request) -> web.Response:
    return web.json_response(dict(SERVER_FEATURE_FLAGS))


def _custom_node_dirs(request: web.Request) -> list[Path]:
    return [Path(d) for d in request.app[CONFIG_KEY].custom_node_dirs if Path(d).is_dir()]


def _merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


async def get_i18n(request: web.Request) -> web.Response:
    """Custom nodes' `locales/{lang}/main.json` (+ nodeDefs, commands, settings), merged by language."""
    translations: dict[str, Any] = {}
    for folder in _custom_node_dirs(request):
        for package in sorted(p for p in folder.iterdir() if (p / "locales").is_dir()):
            for lang_dir in sorted(p for p in (package / "locales").iterdir() if p.is_dir()):
                found = _read_json(lang_dir / "main.json")
                for extra in ("nodeDefs", "commands", "settings"):
                    data = _read_json(lang_dir / f"{extra}.json")
                    if data:
                        found[extra] = data
                if found:
                    _merge(translations.setdefault(lang_dir.name, {}), found)
    return web.json_response(translations)


def web_dirs(app: web.Application) -> dict[str, str]:
    """Custom node packages' frontend folders (WEB_DIRECTORY) by package name: comfystream's registry,
    and ComfyUI's own when a workspace is loaded."""
    dirs = dict(getattr(app[NODE_REGISTRY_KEY], "web_dirs", {}) or {})
    nodes = sys.modules.get("nodes")
    dirs.update(getattr(nodes, "EXTENSION_WEB_DIRS", {}) or {})
    return dirs


async def get_extensions(request: web.Request) -> web.Response:
    scripts = extension_scripts()
    for name, folder in sorted(web_dirs(request.app).items()):
        base = Path(folder)
        for path in sorted(base.rglob("*.js")):
            scripts.append(f"/extensions/{quote(name)}/{path.relative_to(base).as_posix()}")
    return web.json_response(scripts)


# -- models --------------------------------------------------------------------------------------


async def get_embeddings(request: web.Request) -> web.Response:
    fp = folder_paths()
    names = fp.get_filename_list("embeddings") if fp is not None else []
    return web.json_response([os.path.splitext(n)[0] for n in names])


async def list_model_types(request: web.Request) -> web.Response:
    fp = folder_paths()
    return web.json_response(list(fp.folder_names_and_paths) if fp is not None else [])


async def get_models(request: web.Request) -> web.Response:
    fp = folder_paths()
    folder = request.match_info["folder"]
    if fp is None or folder not in fp.folder_names_and_paths:
        return web.Response(status=404)
    return web.json_response(fp.get_filename_list(folder))


async def experiment_model_folders(request: web.Request) -> web.Response:
    fp = folder_paths()
    if fp is None:
        return web.json_response([])
    return web.json_response(
        [
            {"name": name, "folders": fp.get_folder_paths(name)}
            for name in fp.folder_names_and_paths
            if name not in MODEL_FOLDERS_HIDDEN
        ]
    )


async def experiment_models(request: web.Request) -> web.Response:
    fp = folder_paths()
    folder = request.match_info["folder"]
    if fp is None or folder not in fp.folder_names_and_paths:
        return web.Response(status=404)
    out: list[dict[str, Any]] = []
    for index, base in enumerate(fp.folder_names_and_paths[folder][0]):
        for name in fp.get_filename_list(folder):
            path = os.path.join(base, name)
            if os.path.isfile(path):
                st = os.stat(path)
                out.append(
                    {
                        "name": name,
                        "pathIndex": index,
                        "modified": st.st_mtime,
                        "created": st.st_ctime,
                        "size": st.st_size,
                    }
                )
    return web.json_response(out)


def safetensors_metadata(path: str, max_size: int = 1024 * 1024) -> dict[str, Any] | None:
    """The `__metadata__` of a .safetensors file's JSON header (None when it has none)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > max_size:
            return None
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


async def view_metadata(request: web.Request) -> web.Response:
    fp = folder_paths()
    filename = request.query.get("filename", "")
    if fp is None or not filename.endswith(".safetensors"):
        return web.Response(status=404)
    path = fp.get_full_path(request.match_info["folder_name"], filename)
    meta = safetensors_metadata(path) if path else None
    if meta is None:
        return web.Response(status=404)
    return web.json_response(meta)


# -- workflows -----------------------------------------------------------------------------------


def example_workflows(request: web.Request) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for folder in _custom_node_dirs(request):
        for name in EXAMPLE_WORKFLOW_FOLDERS:
            for path in sorted(folder.glob(f"*/{name}/*.json")):
                found.setdefault(path.parent.parent.name, []).append(path.stem)
    return found


async def get_workflow_templates(request: web.Request) -> web.Response:
    return web.json_response(example_workflows(request))


async def get_workflow_template(request: web.Request) -> web.StreamResponse:
    package, file = request.match_info["package"], request.match_info["file"]
    for folder in _custom_node_dirs(request):
        for name in EXAMPLE_WORKFLOW_FOLDERS:
            base = (folder / package / name).resolve()
            path = (base / file).resolve()
            if base.is_dir() and path.is_relative_to(base) and path.is_file():
                return web.FileResponse(path)
    return web.Response(status=404)


async def get_global_subgraphs(request: web.Request) -> web.Response:
    # Custom node packages' subgraph blueprints; comfystream's nodes ship none.
    return web.json_response({})


async def get_global_subgraph(request: web.Request) -> web.Response:
    return web.Response(status=404)


async def get_node_replacements(request: web.Request) -> web.Response:
    return web.json_response({})


async def post_free(request: web.Request) -> web.Response:
    """ComfyUI's `/free` (unload models, free memory before the next prompt). Each job worker and each
    stream's worker owns its models for its whole life here, so there is nothing to do on request."""
    try:
        body = await request.json(loads=json_limits.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {}
    logger.info("/free %s: workers keep their models (nothing to free between prompts)", body)
    return web.Response(status=200)


# Under /api (and the bare path, as ComfyUI registers them).
API_ROUTES: tuple[Route, ...] = (
    Route("GET", "/features", get_features, "The server's feature flags (ComfyUI)"),
    Route("GET", "/i18n", get_i18n, "Custom nodes' translations (ComfyUI)"),
    Route("GET", "/extensions", get_extensions, "Frontend extension scripts to load (ComfyUI)"),
    Route("GET", "/embeddings", get_embeddings, "Embedding names (ComfyUI)"),
    Route("GET", "/models", list_model_types, "Model folder names (ComfyUI)"),
    Route(
        "GET",
        "/models/{folder}",
        get_models,
        "Model files in one folder (ComfyUI)",
        responses={200: "application/json", 404: None},
    ),
    Route("GET", "/experiment/models", experiment_model_folders, "Model folders (ComfyUI)"),
    Route(
        "GET",
        "/experiment/models/{folder}",
        experiment_models,
        "Model files with sizes and times (ComfyUI)",
        responses={200: "application/json", 404: None},
    ),
    Route(
        "GET",
        "/view_metadata/{folder_name}",
        view_metadata,
        "A .safetensors model's metadata (ComfyUI)",
        responses={200: "application/json", 404: None},
    ),
    Route("GET", "/workflow_templates", get_workflow_templates, "Custom nodes' example workflows (ComfyUI)"),
    Route("GET", "/global_subgraphs", get_global_subgraphs, "Subgraph blueprints (ComfyUI)"),
    Route(
        "GET",
        "/global_subgraphs/{id}",
        get_global_subgraph,
        "One subgraph blueprint (ComfyUI)",
        responses={200: "application/json", 404: None},
    ),
    Route("GET", "/node_replacements", get_node_replacements, "Node replacements (ComfyUI)"),
    Route("POST", "/free", post_free, "Unload models / free memory (ComfyUI)", responses={200: None}),
)
# Served under /api only (ComfyUI adds these as static routes there).
API_ONLY_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/workflow_templates/{package}/{file:.+}",
        get_workflow_template,
        "One custom node example workflow (ComfyUI)",
        responses={200: None, 404: None},
    ),
)
INTERNAL_ROUTES: tuple[Route, ...] = (
    Route("GET", "/internal/logs", get_logs, "The server's recent log lines (ComfyUI)"),
    Route("GET", "/internal/logs/raw", get_raw_logs, "The server's recent log entries (ComfyUI)"),
    Route(
        "PATCH",
        "/internal/logs/subscribe",
        subscribe_logs,
        "Subscribe to log lines (ComfyUI)",
        responses={200: None, 400: None},
    ),
    Route("GET", "/internal/folder_paths", get_folder_paths, "Folders by kind (ComfyUI)"),
    Route(
        "GET",
        "/internal/files/{directory_type}",
        get_files,
        "Files in input/output/temp (ComfyUI)",
        responses={200: "application/json", 400: None},
    ),
)
