"""One-shot workflow jobs run in parallel across job workers: ComfyUI's API (/prompt, /ws, /queue,
/history, ...), tasks with SSE progress (/tasks, /progress/{taskId}), and the stream event feed
(/stream/{id}/events). `setup_routes(app)` is what the app factory calls."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from comfystream.pipeline.backend import WorkerBackend, WorkerSpec
from server.http.keys import CONFIG_KEY
from server.http.routes import Route, add_routes
from server.jobs import comfy_routes, stream_events, task_routes, ws
from server.jobs.scheduler import JOB_SCHEDULER_KEY, JobScheduler
from server.jobs.settings import JOB_BACKEND_KEY, JOB_SETTINGS_KEY, JobSettings
from server.jobs.tasks import TASK_TRACKER_KEY, TaskTracker
from server.jobs.ws import WS_HUB_KEY
from server.streams.pipelines import PIPELINE_RESOURCES_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "JOB_BACKEND_KEY",
    "JOB_SCHEDULER_KEY",
    "JOB_SETTINGS_KEY",
    "JobSettings",
    "setup_routes",
]


SSE = "text/event-stream"
ROUTES: tuple[Route, ...] = (
    *comfy_routes.ROUTES,
    Route(
        "GET",
        "/ws",
        ws.websocket_handler,
        "ComfyUI's WebSocket: status and the client's prompt events",
        responses={101: None, 400: "text/plain"},
    ),
    Route(
        "POST",
        "/tasks",
        task_routes.create_task,
        "Queue a prompt as a task: answers its taskId at once",
        tag="tasks",
        responses={200: "application/json", 400: "application/json"},
    ),
    Route(
        "GET",
        "/progress/{task_id}",
        task_routes.task_progress,
        "A task's progress (Server-Sent Events)",
        tag="tasks",
        responses={200: SSE, 204: None, 404: "application/json"},
    ),
)


def setup_routes(app: web.Application) -> None:
    """Register the routes. The settings come from the server config unless `app[JOB_SETTINGS_KEY]`
    is set before startup; the scheduler and its workers start with the app."""
    app[JOB_SETTINGS_KEY] = JobSettings.from_config(app[CONFIG_KEY])
    settings = app[JOB_SETTINGS_KEY]
    app[JOB_SCHEDULER_KEY] = JobScheduler(settings)
    app[WS_HUB_KEY] = ws.WsHub(settings.ws_queue_size)
    app[TASK_TRACKER_KEY] = TaskTracker(settings)
    app[JOB_SCHEDULER_KEY].sinks.extend([app[TASK_TRACKER_KEY], app[WS_HUB_KEY]])
    # As ComfyUI registers them: at `/x` and at `/api/x`.
    add_routes(app, "jobs", [replace(route, aliases=(f"/api{route.path}",)) for route in ROUTES])
    add_routes(
        app,
        "streams",
        [
            Route(
                "GET",
                "/stream/{id}/events",
                stream_events.stream_events,
                "The stream's events: state, warmup, worker restarts, stats, errors (Server-Sent Events)",
                responses={200: SSE, 404: "application/json"},
            )
        ],
    )
    app.cleanup_ctx.append(_scheduler)
    # Not a stop: the long-lived connections (task progress streams, WebSockets) end at shutdown,
    # before aiohttp waits for the handlers still running.
    app.on_shutdown.append(_close_connections)


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


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
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
    yield
    await app[JOB_SCHEDULER_KEY].stop()


def _backend(app: web.Application) -> WorkerBackend:
    """`app[JOB_BACKEND_KEY]` if set, else the backend the app's stream workers come from (so jobs
    and streams share GPU placement, and the workers load the server's --workspace and
    --custom-nodes). WorkerSpec() takes that backend's defaults."""
    backend = app.get(JOB_BACKEND_KEY)
    if backend is not None:
        return backend
    return app[PIPELINE_RESOURCES_KEY].backend


async def _close_connections(app: web.Application) -> None:
    app[TASK_TRACKER_KEY].close()
    await app[WS_HUB_KEY].close()
