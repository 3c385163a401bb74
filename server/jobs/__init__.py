"""One-shot workflow jobs run in parallel across job workers: ComfyUI's API (/prompt, /ws, /queue,
/history, ...), tasks with SSE progress (/tasks, /progress/{taskId}), and the stream event feed
(/stream/{id}/events). `setup_routes(app)` is what the app factory calls."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from comfystream.pipeline.backend import WorkerSpec
from server.app_keys import CONFIG_KEY, OPENAPI_KEY
from server.jobs import comfy_routes, stream_events, task_routes, ws
from server.jobs.scheduler import JobScheduler
from server.jobs.settings import (
    JOB_BACKEND_KEY,
    JOB_SCHEDULER_KEY,
    JOB_SETTINGS_KEY,
    TASK_TRACKER_KEY,
    WS_HUB_KEY,
    JobSettings,
    scheduler_of,
)
from server.jobs.tasks import TaskTracker
from server.openapi import add_api_route

logger = logging.getLogger(__name__)

__all__ = [
    "JOB_BACKEND_KEY",
    "JOB_SCHEDULER_KEY",
    "JOB_SETTINGS_KEY",
    "JobSettings",
    "scheduler_of",
    "setup_routes",
]


JSON = "application/json"
SSE = "text/event-stream"
# What each route answers (the OpenAPI document's responses; the 403 of a foreign Origin is added to
# every state-changing one by server.origin_check).
RESPONSES: dict[tuple[str, str], dict[int, Any]] = {
    ("POST", "/prompt"): {200: JSON, 400: JSON},
    ("GET", "/prompt"): {200: JSON},
    ("GET", "/queue"): {200: JSON},
    ("POST", "/queue"): {200: None, 400: JSON},
    ("POST", "/interrupt"): {200: None, 400: JSON},
    ("GET", "/history"): {200: JSON, 400: JSON},
    ("GET", "/history/{prompt_id}"): {200: JSON},
    ("POST", "/history"): {200: None, 400: JSON},
    ("GET", "/object_info"): {200: JSON},
    ("GET", "/object_info/{node_class}"): {200: JSON},
    ("GET", "/view"): {200: "application/octet-stream", 400: "text/plain", 403: "text/plain", 404: None},
    ("POST", "/upload/image"): {200: JSON, 400: "text/plain"},
    ("GET", "/system_stats"): {200: JSON},
    ("GET", "/ws"): {101: None, 400: "text/plain"},
    ("POST", "/tasks"): {200: JSON, 400: JSON},
    ("GET", "/progress/{task_id}"): {200: SSE, 204: None, 404: JSON},
}
VIEW_QUERY = {
    "filename": "the file's name (required)",
    "type": "input, output (default) or temp",
    "subfolder": "a folder inside it",
    "preview": "webp or jpeg, and ;quality",
    "channel": "rgba (default), rgb or a",
}


def setup_routes(app: web.Application) -> None:
    """Register the routes. The settings come from the server config unless `app[JOB_SETTINGS_KEY]`
    is set before startup; the scheduler and its workers start with the app."""
    app[JOB_SETTINGS_KEY] = JobSettings.from_config(app[CONFIG_KEY])
    settings = app[JOB_SETTINGS_KEY]
    app[JOB_SCHEDULER_KEY] = JobScheduler(settings)
    app[WS_HUB_KEY] = ws.WsHub(settings.ws_queue_size)
    app[TASK_TRACKER_KEY] = TaskTracker(settings)
    app[JOB_SCHEDULER_KEY].sinks.extend([app[TASK_TRACKER_KEY], app[WS_HUB_KEY]])
    api = app[OPENAPI_KEY]
    routes = [(m, p, h, s, "jobs") for m, p, h, s in comfy_routes.ROUTES]
    routes += [
        (
            "GET",
            "/ws",
            ws.websocket_handler,
            "ComfyUI's WebSocket: status and the client's prompt events",
            "jobs",
        ),
        (
            "POST",
            "/tasks",
            task_routes.create_task,
            "Queue a prompt as a task: answers its taskId at once",
            "tasks",
        ),
        (
            "GET",
            "/progress/{task_id}",
            task_routes.task_progress,
            "A task's progress (Server-Sent Events)",
            "tasks",
        ),
    ]
    for method, path, handler, summary, tag in routes:
        spec: dict[str, Any] = {"responses": RESPONSES.get((method, path), {200: JSON})}
        if path == "/view":
            spec["query"] = VIEW_QUERY
        add_api_route(app, api, method, path, handler, summary, tags=(tag,), **spec)
        add_api_route(
            app,
            api,
            method,
            f"/api{path}",
            handler,
            summary,
            tags=(tag,),
            alias_of=f"{method} {path}",
            **spec,
        )
    add_api_route(
        app,
        api,
        "GET",
        "/stream/{id}/events",
        stream_events.stream_events,
        "The stream's events: state, warmup, worker restarts, stats, errors (Server-Sent Events)",
        tags=("streams",),
        responses={200: SSE, 404: JSON},
    )
    app.on_startup.append(_start)
    app.on_shutdown.append(_shutdown)


SAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "assets" / "example.png"


def place_sample_image(input_dir: Path) -> None:
    """`example.png` into an input folder that holds no file yet (a fresh clone's ./input)."""
    try:
        if any(p.is_file() for p in input_dir.iterdir()):
            return
        shutil.copyfile(SAMPLE_IMAGE, input_dir / SAMPLE_IMAGE.name)
        logger.info(
            "the input folder %s was empty: put the sample image %s there", input_dir, SAMPLE_IMAGE.name
        )
    except OSError as exc:  # a read-only folder: LoadImage then lists what is there
        logger.warning("could not put the sample image into %s: %s", input_dir, exc)


async def _start(app: web.Application) -> None:
    # The settings as they are now: a test or an embedder may have replaced them after setup.
    settings = app[JOB_SETTINGS_KEY]
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    if settings.sample_image:
        place_sample_image(settings.input_dir)
    app[WS_HUB_KEY].queue_size = settings.ws_queue_size
    app[TASK_TRACKER_KEY].settings = settings
    app[JOB_SCHEDULER_KEY].start(_backend(app), WorkerSpec(), settings, spawn_now=settings.spawn_at_startup)
    logger.info(
        "jobs: %d worker(s); input %s, output %s",
        settings.job_workers,
        settings.input_dir,
        settings.output_dir,
    )


def _backend(app: web.Application) -> Any:
    """`app[JOB_BACKEND_KEY]` if set, else the backend the app's stream workers come from (so jobs
    and streams share GPU placement, and the workers load the server's --workspace and
    --custom-nodes). WorkerSpec() takes that backend's defaults."""
    backend = app.get(JOB_BACKEND_KEY)
    if backend is not None:
        return backend
    from server.app import PIPELINE_RESOURCES_KEY

    return app[PIPELINE_RESOURCES_KEY].backend


async def _shutdown(app: web.Application) -> None:
    app[TASK_TRACKER_KEY].close()
    await app[WS_HUB_KEY].close()
    await app[JOB_SCHEDULER_KEY].stop()
