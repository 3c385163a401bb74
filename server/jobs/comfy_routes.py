"""ComfyUI's HTTP API, with its request, response and error shapes, over the job scheduler:
/prompt, /queue, /history, /interrupt, /object_info, /view, /upload/image, /system_stats (and
/ws in server/jobs/ws.py). Every route is also served under /api/, as ComfyUI does."""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib import metadata
from typing import Any

from aiohttp import web

from comfystream import json_limits
from comfystream.comfyui.workspace import comfyui_version as workspace_comfyui_version
from server.http.keys import CONFIG_KEY, NODE_REGISTRY_KEY
from server.http.routes import Route
from server.jobs.files import PathRefused, resolve_view_path, save_upload, view_response
from server.jobs.scheduler import JOB_SCHEDULER_KEY
from server.jobs.settings import JOB_SETTINGS_KEY
from server.jobs.submit import PromptRequest, comfy_error, job_folders, submit_prompt_async
from server.jobs.ws import queue_info

logger = logging.getLogger(__name__)


async def _json_or(request: web.Request, default: Any) -> Any:
    """The body's JSON (`default` when empty); bad JSON is a 400 that says where it breaks."""
    raw = await request.read()
    if not raw.strip():
        return default
    try:
        return json_limits.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        body = {
            "error": comfy_error("invalid_json", "Invalid JSON", json_limits.describe_error(exc)),
            "node_errors": {},
        }
        raise web.HTTPBadRequest(text=json.dumps(body), content_type="application/json") from None


def _bad_request(kind: str, message: str, details: str = "") -> web.Response:
    return web.json_response({"error": comfy_error(kind, message, details), "node_errors": {}}, status=400)


# -- prompts and the queue ---------------------------------------------------------------------


async def post_prompt(request: web.Request) -> web.Response:
    data = await _json_or(request, None)
    if not isinstance(data, dict):
        return _bad_request("invalid_prompt", "Invalid prompt", "the request body must be a JSON object")
    if "prompt" not in data:
        return web.json_response(
            {"error": comfy_error("no_prompt", "No prompt provided"), "node_errors": {}}, status=400
        )
    try:
        number = float(data["number"]) if "number" in data else None
    except (TypeError, ValueError):
        return _bad_request(
            "invalid_prompt", "Invalid prompt", f"number must be a number, got {data['number']!r}"
        )
    extra_data = data.get("extra_data") if isinstance(data.get("extra_data"), dict) else {}
    partial = data.get("partial_execution_targets")
    submitted = await submit_prompt_async(
        PromptRequest(
            prompt=data["prompt"],
            prompt_id=str(data["prompt_id"]) if data.get("prompt_id") is not None else None,
            client_id=str(data["client_id"]) if data.get("client_id") is not None else None,
            number=number,
            front=bool(data.get("front")),
            extra_data=dict(extra_data),
            partial_execution_targets=list(partial) if isinstance(partial, list) else None,
        ),
        request.app[NODE_REGISTRY_KEY],
        request.app[JOB_SETTINGS_KEY],
        request.app[JOB_SCHEDULER_KEY],
    )
    if submitted.item is None:
        logger.warning("invalid prompt: %s", submitted.error)
        return web.json_response(submitted.to_comfy(), status=400)
    return web.json_response(submitted.to_comfy())


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(queue_info(request.app[JOB_SCHEDULER_KEY].queue.remaining))


async def get_queue(request: web.Request) -> web.Response:
    queue = request.app[JOB_SCHEDULER_KEY].queue
    return web.json_response(
        {
            "queue_running": [item.to_comfy() for item in queue.running.values()],
            "queue_pending": [item.to_comfy() for item in queue.pending()],
        }
    )


async def post_queue(request: web.Request) -> web.Response:
    data = await _json_or(request, {})
    if not isinstance(data, dict):
        return _bad_request("invalid_request", "Invalid request", "the body must be a JSON object")
    scheduler = request.app[JOB_SCHEDULER_KEY]
    if data.get("clear"):
        scheduler.clear_pending()
    if "delete" in data:
        ids = data["delete"] if isinstance(data["delete"], list) else [data["delete"]]
        scheduler.delete_pending(str(i) for i in ids)
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    data = await _json_or(request, {})
    if data is None:  # unreadable JSON (or nested too deep) is no request to interrupt everything
        return _bad_request("invalid_request", "Invalid request", "the body is not valid JSON")
    prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
    request.app[JOB_SCHEDULER_KEY].interrupt(str(prompt_id) if prompt_id else None)
    return web.Response(status=200)


# -- history -----------------------------------------------------------------------------------


async def get_history(request: web.Request) -> web.Response:
    try:
        max_items = int(request.query["max_items"]) if "max_items" in request.query else None
        offset = int(request.query["offset"]) if "offset" in request.query else -1
    except ValueError:
        return _bad_request("invalid_request", "Invalid request", "max_items and offset must be integers")
    queue = request.app[JOB_SCHEDULER_KEY].queue
    return web.json_response(queue.get_history(max_items=max_items, offset=offset), dumps=_dumps)


async def get_history_item(request: web.Request) -> web.Response:
    queue = request.app[JOB_SCHEDULER_KEY].queue
    return web.json_response(queue.get_history(prompt_id=request.match_info["prompt_id"]), dumps=_dumps)


async def post_history(request: web.Request) -> web.Response:
    data = await _json_or(request, {})
    if not isinstance(data, dict):
        return _bad_request("invalid_request", "Invalid request", "the body must be a JSON object")
    queue = request.app[JOB_SCHEDULER_KEY].queue
    if data.get("clear"):
        queue.wipe_history()
    if "delete" in data:
        for prompt_id in data["delete"] if isinstance(data["delete"], list) else [data["delete"]]:
            queue.delete_history(str(prompt_id))
    return web.Response(status=200)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)  # a custom node's ui values need not be JSON types


# -- nodes ---------------------------------------------------------------------------------------


async def get_object_info(request: web.Request) -> web.Response:
    with job_folders(request.app[JOB_SETTINGS_KEY]):
        info = request.app[NODE_REGISTRY_KEY].object_info()
    return web.json_response(info, dumps=_dumps)


async def get_object_info_node(request: web.Request) -> web.Response:
    with job_folders(request.app[JOB_SETTINGS_KEY]):
        info = request.app[NODE_REGISTRY_KEY].object_info(request.match_info["node_class"])
    return web.json_response(info, dumps=_dumps)


# -- files ---------------------------------------------------------------------------------------


async def view(request: web.Request) -> web.StreamResponse:
    if "filename" not in request.query:
        return web.Response(status=404)
    settings = request.app[JOB_SETTINGS_KEY]
    try:
        path = resolve_view_path(
            settings,
            request.query["filename"],
            request.query.get("type", "output"),
            request.query.get("subfolder"),
        )
    except PathRefused as exc:
        logger.warning("/view refused %r: %s", request.query_string, exc)
        return web.Response(status=exc.status, text=str(exc))
    if not path.is_file():
        return web.Response(status=404)
    return view_response(path, request.query)


async def upload_image(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        return web.Response(status=400, text="expected multipart/form-data with an `image` file")
    try:
        post = await request.post()
    except ValueError as exc:  # a multipart body without its boundary, or malformed
        return web.Response(status=400, text=f"bad multipart body: {exc}")
    image = post.get("image")
    if image is None or not hasattr(image, "file"):
        return web.Response(status=400, text="no `image` file in the form")
    overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")
    try:
        saved = save_upload(
            request.app[JOB_SETTINGS_KEY],
            image.file.read(),
            image.filename or "",
            str(post.get("type") or "input"),
            str(post.get("subfolder") or ""),
            overwrite,
        )
    except PathRefused as exc:
        return web.Response(status=exc.status, text=str(exc))
    return web.json_response(saved)


# -- system --------------------------------------------------------------------------------------


def _memory() -> tuple[int, int]:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = total
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return total, free


def _version() -> str:
    try:
        return metadata.version("comfystream")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# The ComfyUI version whose API the built-in engine answers as. The editor reads `comfyui_version` as
# ComfyUI's and compares node packs' requirements with it: our own version (0.1.0) made it advise
# upgrading ComfyUI. This is the newest comfy-core version the pinned frontend's own default
# workflow names (its nodes' `ver`), so the editor's core nodes need no newer ComfyUI than this.
COMFYUI_API_VERSION = "0.3.73"


def served_comfyui_version(workspace: Any) -> str:
    """A workspace's ComfyUI version, else COMFYUI_API_VERSION."""
    found = workspace_comfyui_version(workspace) if workspace is not None else None
    return found or COMFYUI_API_VERSION


async def system_stats(request: web.Request) -> web.Response:
    ram_total, ram_free = _memory()
    scheduler = request.app[JOB_SCHEDULER_KEY]
    devices: list[dict[str, Any]] = []
    torch_version = ""
    seen: set[tuple[Any, Any]] = set()
    for worker in scheduler.workers:
        status = await worker.request_status()
        if not status:
            continue
        torch_version = torch_version or str(status.get("torch_version", ""))
        key = (status.get("device_type"), status.get("gpu"))
        if key in seen:  # one entry per device, however many workers share it
            continue
        seen.add(key)
        cpu = status.get("device_type") == "cpu"
        devices.append(
            {
                "name": status.get("device_name", "cpu"),
                "type": status.get("device_type", "cpu"),
                "index": status.get("device_index"),
                "vram_total": ram_total if cpu else status.get("vram_total", 0),
                "vram_free": ram_free if cpu else status.get("vram_free", 0),
                "torch_vram_total": 0 if cpu else status.get("torch_vram_total", 0),
                "torch_vram_free": 0 if cpu else status.get("torch_vram_free", 0),
            }
        )
    return web.json_response(
        {
            "system": {
                "os": os.name,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": served_comfyui_version(request.app[CONFIG_KEY].workspace),
                "comfystream_version": _version(),
                "required_frontend_version": "",
                "python_version": sys.version,
                "pytorch_version": torch_version,
                "embedded_python": False,
                # ComfyUI shows its command line here; ours may hold secrets (tokens as flags).
                "argv": [],
            },
            "devices": devices,
        }
    )


VIEW_QUERY = {
    "filename": "the file's name (required)",
    "type": "input, output (default) or temp",
    "subfolder": "a folder inside it",
    "preview": "webp or jpeg, and ;quality",
    "channel": "rgba (default), rgb or a",
}
ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/prompt",
        post_prompt,
        "Queue a prompt (ComfyUI)",
        responses={200: "application/json", 400: "application/json"},
    ),
    Route("GET", "/prompt", get_prompt, "Queue size (ComfyUI)"),
    Route("GET", "/queue", get_queue, "Running and pending prompts (ComfyUI)"),
    Route(
        "POST",
        "/queue",
        post_queue,
        "Clear the queue or delete pending prompts (ComfyUI)",
        responses={200: None, 400: "application/json"},
    ),
    Route(
        "POST",
        "/interrupt",
        post_interrupt,
        "Interrupt one running prompt (prompt_id) or all (ComfyUI)",
        responses={200: None, 400: "application/json"},
    ),
    Route(
        "GET",
        "/history",
        get_history,
        "Finished prompts (ComfyUI)",
        responses={200: "application/json", 400: "application/json"},
    ),
    Route("GET", "/history/{prompt_id}", get_history_item, "One finished prompt (ComfyUI)"),
    Route(
        "POST",
        "/history",
        post_history,
        "Clear the history or delete entries (ComfyUI)",
        responses={200: None, 400: "application/json"},
    ),
    Route("GET", "/object_info", get_object_info, "Every node's schema (ComfyUI)"),
    Route("GET", "/object_info/{node_class}", get_object_info_node, "One node's schema (ComfyUI)"),
    Route(
        "GET",
        "/view",
        view,
        "An input, output or temp image (ComfyUI)",
        query=VIEW_QUERY,
        responses={200: "application/octet-stream", 400: "text/plain", 403: "text/plain", 404: None},
    ),
    Route(
        "POST",
        "/upload/image",
        upload_image,
        "Upload an image into the input folder (ComfyUI)",
        responses={200: "application/json", 400: "text/plain"},
    ),
    Route("GET", "/system_stats", system_stats, "System and device information (ComfyUI)"),
)
