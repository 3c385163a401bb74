"""The web dashboard: `GET /` (the page), `/dashboard/*` (its ES modules, CSS and vendored UI library),
`GET /stream/{id}/preview.jpg` (a stream's latest output frame as JPEG) and `GET /stream/{id}/prompts`
(the prompts a running stream runs, for the page's prompt editor), and `GET /jobs/events` (every job's
events, server/dashboard/feed.py).

The page itself is plain ES modules: nothing to build, nothing loaded from outside this server."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from server.dashboard.feed import setup_jobs_feed
from server.http import errors
from server.http.routes import Route, Static, add_routes
from server.streams.manager import STREAM_MANAGER_KEY, StreamNotFound

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREVIEW_MAX_WIDTH = 480
PREVIEW_QUALITY = 80
# The page is small and changes with the server: always revalidate, so an upgrade is never half-cached.
NO_CACHE = {"Cache-Control": "no-cache"}
NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class _CachedPreview:
    frame: Any  # the av.VideoFrame the JPEG was made from (compared by identity)
    width: int
    jpeg: bytes


PREVIEW_CACHE_KEY = web.AppKey("dashboard_preview_cache", dict)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)


def latest_output_frame(stream: Any) -> Any:
    """The newest frame the stream's pipeline handed out (None before the first one, or while a
    WebRTC stream has no pipeline)."""
    pipeline = getattr(stream, "pipeline", None)
    return getattr(pipeline, "latest_output_frame", None) if pipeline is not None else None


def encode_preview(frame: Any, max_width: int = PREVIEW_MAX_WIDTH, quality: int = PREVIEW_QUALITY) -> bytes:
    """An av.VideoFrame as JPEG, scaled down (never up) to `max_width`."""
    image = frame.to_image()
    if image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _known(request: web.Request, stream_id: str) -> Any:
    """The running stream, or None for one that has finished; 404 for an unknown id."""
    manager = request.app[STREAM_MANAGER_KEY]
    stream = manager.active.get(stream_id)
    if stream is not None:
        return stream
    try:
        manager.info(stream_id)
    except StreamNotFound:
        raise errors.not_found(stream_id) from None
    return None


async def stream_preview(request: web.Request) -> web.Response:
    """204 while there is no frame yet (or the stream has just finished), so that the page's
    periodic refresh never shows an error for a stream that is starting or stopping."""
    stream_id = request.match_info["id"]
    stream = _known(request, stream_id)
    frame = latest_output_frame(stream) if stream is not None else None
    if frame is None:
        return web.Response(status=204, headers=NO_STORE)
    try:
        width = max(16, min(int(request.query.get("w", PREVIEW_MAX_WIDTH)), 1920))
    except ValueError:
        raise errors.error_response(web.HTTPBadRequest, "Invalid request", "w must be an integer") from None
    cache: dict[str, _CachedPreview] = request.app[PREVIEW_CACHE_KEY]
    cached = cache.get(stream_id)
    if cached is None or cached.frame is not frame or cached.width != width:
        try:
            jpeg = await asyncio.to_thread(encode_preview, frame, width)
        except Exception:
            logger.exception("stream %s: preview encode failed", stream_id)
            return web.Response(status=204, headers=NO_STORE)
        cached = _CachedPreview(frame, width, jpeg)
        cache[stream_id] = cached
        active = request.app[STREAM_MANAGER_KEY].active
        for gone in [sid for sid in cache if sid not in active]:
            del cache[gone]
    return web.Response(body=cached.jpeg, content_type="image/jpeg", headers=NO_STORE)


async def stream_prompts(request: web.Request) -> web.Response:
    stream_id = request.match_info["id"]
    stream = _known(request, stream_id)
    if stream is None:
        raise errors.error_response(
            web.HTTPNotFound, "Stream not found", f"Stream {stream_id!r} has finished"
        )
    prompts = list(getattr(stream.spec, "prompts", []) or [])
    return web.json_response({"stream_id": stream_id, "prompts": prompts}, headers=NO_STORE)


ROUTES = (
    Route("GET", "/", index, allow_head=True),
    Static("/dashboard/", STATIC_DIR),
    Route(
        "GET",
        "/stream/{id}/preview.jpg",
        stream_preview,
        "The stream's latest output frame as JPEG (204 before the first)",
        query={"w": f"maximum width in pixels (default {PREVIEW_MAX_WIDTH})"},
        responses={200: "image/jpeg", 204: None, 400: "application/json", 404: None},
    ),
    Route(
        "GET",
        "/stream/{id}/prompts",
        stream_prompts,
        "The prompts a running stream runs",
        responses={200: "application/json", 404: None},
    ),
)


def setup_routes(app: web.Application) -> None:
    app[PREVIEW_CACHE_KEY] = {}
    add_routes(app, "dashboard", ROUTES)
    setup_jobs_feed(app)
