"""Trickle stream API (docs/DESIGN.md section 7, bodies as in the seed): start, inspect, update, stop,
workers, and the gateway's BYOC single-stream forms."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiohttp import web

from comfystream import json_limits
from server.http import errors
from server.http.errors import ErrorResponse, ValidationErrorItem
from server.http.keys import CONFIG_KEY, NODE_REGISTRY_KEY, WORKSPACE_KEY
from server.http.routes import Route, add_routes, json_body, parse, respond
from server.livepeer.gateway_params import unwrap_params
from server.nodes.models import WorkspaceInfoResponse
from server.nodes.workspace import describe as describe_workspace
from server.streams.api_errors import api_handler
from server.streams.health import server_status
from server.streams.hosts import check_stream_urls
from server.streams.input_check import check_input
from server.streams.manager import STREAM_MANAGER_KEY, StreamManager
from server.streams.models import (
    STREAM_ID_PATTERN,
    CreateStreamRequest,
    RestartWorkerResponse,
    StartStreamRequest,
    StartStreamResponse,
    StopStreamRequest,
    StopStreamResponse,
    StreamInfo,
    StreamListResponse,
    StreamParams,
    StreamStatusResponse,
    UpdatePromptsRequest,
    UpdatePromptsResponse,
    WorkerStatus,
    WorkerStatusResponse,
)
from server.streams.pipelines import check_gpu_room
from server.streams.request_fields import check_flat_fields, check_start_fields
from server.streams.spec import StreamSpec, WorkerParams

logger = logging.getLogger(__name__)

# `/stream/{id}` without the single-stream forms' names: otherwise it also matches `/stream/start`
# and a 405 there would advertise GET and DELETE in its Allow header.
STREAM_BY_ID = "/stream/{id:(?!(?:start|stop|params|status)$)[^/]+}"
# The stats bodies: the pipeline's counters (received, processed, dropped, fps, latency, ...) beside
# these fields; which counters depends on the pipeline, so they are open.
STREAM_STATS_SCHEMA = {
    "type": "object",
    "properties": {
        "stream_id": {"type": "string"},
        "state": {"type": "string"},
        "timestamp": {"type": "number", "description": "seconds since the epoch"},
    },
    "required": ["stream_id", "state", "timestamp"],
}
ALL_STATS_SCHEMA = {
    "type": "object",
    "description": "stream id -> that stream's stats",
    "additionalProperties": {
        "type": "object",
        "properties": {"timestamp": {"type": "number"}},
        "required": ["timestamp"],
    },
}
# Keys a params update carries to address a stream rather than to change it.
_ID_KEYS = ("gateway_request_id", "request_id", "stream_id")
# go-livepeer's orchestrator names the stream in this header on every request to the worker
# (byoc `createWorkerReq`), so that a proxy, or a server running several streams, can route it.
STREAM_ID_HEADER = "X-Stream-Id"
_STOP_REASON_MAX = 200


def _manager(request: web.Request) -> StreamManager:
    return request.app[STREAM_MANAGER_KEY]


def header_stream_id(request: web.Request) -> str | None:
    """The stream the orchestrator names in `X-Stream-Id` (None without the header); a malformed
    one is a 400."""
    value = request.headers.get(STREAM_ID_HEADER, "").strip()
    if not value:
        return None
    if not STREAM_ID_PATTERN.match(value):
        raise errors.error_response(
            web.HTTPBadRequest,
            "Invalid request",
            f"{STREAM_ID_HEADER} must be 1-128 characters of letters, digits and . _ : @ -",
        )
    return value


# ---- start ---------------------------------------------------------------------------------------


async def _start(request: web.Request, body: StartStreamRequest) -> web.Response:
    manager = _manager(request)
    check_stream_urls(request, request.app[CONFIG_KEY], body)  # before anything connects out
    stream_id = header_stream_id(request) or body.chosen_id() or uuid.uuid4().hex
    # In a thread: a large prompt takes a while to validate, and the loop carries every stream's frames.
    prompts, given = await asyncio.to_thread(manager.validate_prompts, body.params.prompt_value())
    params = body.params
    spec = StreamSpec(
        stream_id=stream_id,
        subscribe_url=body.subscribe_url,
        publish_url=body.publish_url,
        control_url=body.control_url,
        events_url=body.events_url,
        data_url=body.data_url,
        max_framerate=params.max_framerate,
        detect_out_resolution=params.detect_out_resolution is not False,
        width=params.width,
        height=params.height,
        prompts=prompts,
        prompts_set=given,
        dedicated_worker=params.dedicated_worker,
        use_prompt_worker=params.use_prompt_worker,
        max_latency_ms=params.max_latency_ms,
        worker_params=WorkerParams(disable_cuda_malloc=params.disable_cuda_malloc, gpu_only=params.gpu_only),
        passthrough=dict(params.model_extra or {}),
    )
    await check_gpu_room(request.app, spec)  # 503 with the reason when no GPU can take its worker
    input_check = await check_input(spec.subscribe_url) if spec.subscribe_url else None
    if input_check is not None and input_check.verdict == "unreachable":
        manager.record_refused(spec, f"input not reachable: {spec.subscribe_url}: {input_check.detail}")
        raise errors.error_response(
            web.HTTPBadRequest,
            "Input not reachable",
            f"subscribe_url {spec.subscribe_url}: {input_check.detail}. Nothing was started",
            [
                ValidationErrorItem(
                    error_type="input_unreachable",
                    message=input_check.detail,
                    input_name="subscribe_url",
                    received_value=spec.subscribe_url,
                )
            ],
        )
    manager.start(spec, input_missing=input_check is not None and input_check.verdict == "missing")
    return respond(
        StartStreamResponse(
            message=f"Stream {stream_id} started successfully", request_id=stream_id, config=spec.config()
        )
    )


@api_handler
async def start_stream(request: web.Request) -> web.Response:
    data = await json_body(request)
    check_start_fields(data)
    return await _start(request, parse(StartStreamRequest, data))


@api_handler
async def create_stream(request: web.Request) -> web.Response:
    data = await json_body(request)
    if isinstance(data, dict) and "params" in data:  # the start form, sent to POST /stream
        check_start_fields(data)
        return await _start(request, parse(StartStreamRequest, data))
    check_flat_fields(data)
    return await _start(request, parse(CreateStreamRequest, data).to_start())


# ---- one stream ----------------------------------------------------------------------------------


@api_handler
async def get_stream(request: web.Request) -> web.Response:
    return respond(_manager(request).info(request.match_info["id"]))


@api_handler
async def delete_stream(request: web.Request) -> web.Response:
    stream_id = request.match_info["id"]
    info = await _manager(request).stop(stream_id, "stopped by DELETE")
    return respond(
        StopStreamResponse(message=f"Stream {stream_id} stopped", request_id=stream_id, stats=info.stats)
    )


@api_handler
async def update_prompts(request: web.Request) -> web.Response:
    stream_id = request.match_info["id"]
    manager = _manager(request)
    manager.get(stream_id)  # 404 before a 400 about the body
    body = parse(UpdatePromptsRequest, await json_body(request))
    if body.prompt_value() is None and body.parameters is None:
        raise errors.error_response(
            web.HTTPBadRequest, "Invalid request", "Give `prompt`, `prompts` or `parameters` to update"
        )
    outcome = await manager.update(stream_id, body.prompt_value(), body.parameters, source="rest")
    return respond(_update_response(stream_id, outcome))


def _update_response(stream_id: str, outcome) -> UpdatePromptsResponse:
    return UpdatePromptsResponse(
        message=f"Prompts updated for stream {stream_id}",
        request_id=stream_id,
        prompts_count=outcome.prompts_count,
        parameters_updated=outcome.parameters_updated,
        warmup_performed=outcome.warmup_performed,
    )


async def _apply_params(request: web.Request, stream_id: str, data: object) -> web.Response:
    data = unwrap_params(data)
    if not isinstance(data, dict):
        parse(StreamParams, data)  # raises the 400 for a body that is not an object
    outcome = await _manager(request).apply_params(stream_id, data, source="rest")  # type: ignore[arg-type]
    return respond(_update_response(stream_id, outcome))


@api_handler
async def update_params(request: web.Request) -> web.Response:
    stream_id = request.match_info["id"]
    _manager(request).get(stream_id)
    return await _apply_params(request, stream_id, await json_body(request))


def _worker_list(stream) -> list[WorkerStatus]:
    return [WorkerStatus.model_validate(w) for w in stream.worker_status()]


@api_handler
async def get_worker(request: web.Request) -> web.Response:
    stream = _manager(request).get(request.match_info["id"])
    workers = _worker_list(stream)
    active = next(
        (w for w in workers if (w.model_extra or {}).get("active")), workers[0] if workers else None
    )
    return respond(
        WorkerStatusResponse(
            stream_id=stream.stream_id,
            pipeline_type=stream.spec.pipeline_type,
            worker=active,
            workers=workers,
        )
    )


@api_handler
async def restart_worker(request: web.Request) -> web.Response:
    stream = _manager(request).get(request.match_info["id"])
    await stream.restart_worker()
    return respond(
        RestartWorkerResponse(
            message=f"Worker restarted for stream {stream.stream_id}",
            request_id=stream.stream_id,
            workers=_worker_list(stream),
        )
    )


@api_handler
async def workspace_info(request: web.Request) -> web.Response:
    stream = _manager(request).get(request.match_info["id"])
    # The pipeline knows its workers and their spec; the server knows the nodes it loaded.
    from_pipeline = dict(getattr(stream.pipeline, "workspace_info", dict)() or {})
    info = describe_workspace(
        request.app[NODE_REGISTRY_KEY],
        request.app[WORKSPACE_KEY],
        request.app[CONFIG_KEY],
        from_pipeline,
        worker_count=len(stream.worker_status()),
    )
    return respond(WorkspaceInfoResponse(stream_id=stream.stream_id, workspace_info=info))


# ---- all streams and the BYOC single-stream forms ------------------------------------------------


@api_handler
async def list_streams(request: web.Request) -> web.Response:
    manager = _manager(request)
    streams = [s.info() for s in manager.active.values()]
    return respond(
        StreamListResponse(
            count=len(streams),
            max_streams=manager.config.max_streams,
            streams=streams,
            ended=manager.ended_by_themselves(),
        )
    )


@api_handler
async def all_stats(request: web.Request) -> web.Response:
    now = time.time()
    return web.json_response(
        {sid: {"timestamp": now, **s.stats()} for sid, s in _manager(request).active.items()}
    )


@api_handler
async def stream_stats(request: web.Request) -> web.Response:
    stream_id = request.match_info["id"]
    info = _manager(request).info(stream_id)  # live or recently finished; 404 otherwise
    return web.json_response(
        {"stream_id": stream_id, "state": info.state, "timestamp": time.time(), **info.stats.model_dump()}
    )


async def _stop_body(request: web.Request) -> tuple[str | None, str | None]:
    """(stream named in the body, reason). go-livepeer sends a plain-text reason (`timeout waiting
    for events`, `stream ended`, an error's text) or nothing; a JSON object may name the stream."""
    raw = await request.read()
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None, None
    try:
        data = json_limits.loads(text)
    except ValueError:  # not JSON, or nested too deep to be anything but a reason (JsonTooDeep)
        return None, text[:_STOP_REASON_MAX]
    if isinstance(data, dict):
        body = parse(StopStreamRequest, data)
        reason = data.get("reason")
        return body.chosen_id(), str(reason)[:_STOP_REASON_MAX] if reason else None
    return None, text[:_STOP_REASON_MAX]  # JSON, but not an object: a reason all the same


@api_handler
async def byoc_stop(request: web.Request) -> web.Response:
    named, reason = await _stop_body(request)
    manager = _manager(request)
    stream = manager.only_stream(header_stream_id(request) or named or request.query.get("stream_id"))
    why = f"stopped by the gateway: {reason}" if reason else "stopped by the gateway"
    await stream.stop(why, kind="gateway")
    info = stream.info()
    return respond(
        StopStreamResponse(
            message=f"Stream {stream.stream_id} stopped", request_id=stream.stream_id, stats=info.stats
        )
    )


@api_handler
async def byoc_params(request: web.Request) -> web.Response:
    data = unwrap_params(await json_body(request))
    stream_id = header_stream_id(request) or request.query.get("stream_id")
    if isinstance(data, dict):
        data = dict(data)
        for key in _ID_KEYS:
            value = data.pop(key, None)
            stream_id = stream_id or value
    stream = _manager(request).only_stream(stream_id)
    return await _apply_params(request, stream.stream_id, data)


def _fps(stats: dict, *keys: str) -> float:
    return next((float(stats[k]) for k in keys if stats.get(k) is not None), 0.0)


@api_handler
async def byoc_status(request: web.Request) -> web.Response:
    """Our fields (every stream) and pytrickle's (its StreamState.get_pipeline_state() and its
    client keys, about the stream named by X-Stream-Id / ?stream_id=, or the only one)."""

    manager = _manager(request)
    streams = {sid: manager.info(sid) for sid in manager.active}
    wanted = header_stream_id(request) or request.query.get("stream_id")
    if wanted:
        current: StreamInfo | None = manager.info(wanted)
    else:
        current = next(iter(streams.values())) if len(streams) == 1 else None
    status = server_status(request.app)
    fps = params = None
    if current is not None:
        stats = current.stats.model_dump()
        fps = {
            "ingress_video_fps": _fps(stats, "input_fps", "fps_in"),
            "ingress_audio_fps": 0.0,
            "egress_video_fps": _fps(stats, "output_fps", "fps_out"),
            "egress_audio_fps": 0.0,
        }
        params = {
            "subscribe_url": current.config.subscribe_url,
            "publish_url": current.config.publish_url,
            "gateway_request_id": current.stream_id,
        }
    return respond(
        StreamStatusResponse(
            status=status,
            state=status,
            pipeline_ready=status in ("IDLE", "OK"),
            active_streams=len(streams),
            startup_complete=status != "LOADING",
            pipeline_state=status,
            client_active=current is not None and current.state in ("starting", "running"),
            client_running=current is not None and current.state == "running",
            fps=fps,
            current_params=params,
            processing_active=any(s.state == "running" for s in streams.values()),
            stream_count=len(streams),
            message=f"{len(streams)} stream(s) active",
            current_stream=current,
            all_streams=streams,
        )
    )


ERR = ErrorResponse  # every error status has the one error body
START = {
    "request_model": StartStreamRequest,
    "responses": {200: StartStreamResponse, 400: ERR, 409: ERR, 503: ERR},
}
ROUTES = (
    Route(
        "POST",
        "/stream/start",
        start_stream,
        "Start a trickle stream",
        aliases=("/live-video-to-video",),
        **START,
    ),
    Route(
        "POST",
        "/stream",
        create_stream,
        "Create a stream (flat form: params beside the URLs)",
        request_model=CreateStreamRequest,
        responses={200: StartStreamResponse, 400: ERR, 409: ERR, 503: ERR},
    ),
    Route("GET", "/streams", list_streams, "List the running streams", responses={200: StreamListResponse}),
    Route(
        "GET",
        "/streams/stats",
        all_stats,
        "Stats of every running stream, by id",
        responses={200: ("application/json", ALL_STATS_SCHEMA)},
    ),
    # The BYOC forms before /stream/{id}, though aiohttp prefers the plain path anyway.
    Route(
        "POST",
        "/stream/stop",
        byoc_stop,
        "Stop the stream (BYOC): the one named by the X-Stream-Id header, the body or ?stream_id=, "
        "or the only one; the body may be plain text (the reason, as go-livepeer sends it)",
        request_model=StopStreamRequest,
        request_required=False,
        query={"stream_id": "the stream, when several run"},
        responses={200: StopStreamResponse, 400: ERR, 404: ERR},
    ),
    Route(
        "POST",
        "/stream/params",
        byoc_params,
        "Update the stream's params (BYOC: as a control message); X-Stream-Id names the stream",
        request_model=StreamParams,
        query={"stream_id": "the stream, when several run"},
        responses={200: UpdatePromptsResponse, 400: ERR, 404: ERR},
    ),
    Route(
        "GET",
        "/stream/status",
        byoc_status,
        "Status (BYOC): pytrickle's fields for the stream named by X-Stream-Id (or the only one), "
        "and every stream",
        query={"stream_id": "the stream to report as current_stream"},
        responses={200: StreamStatusResponse, 404: ERR},
    ),
    Route(
        "GET",
        STREAM_BY_ID,
        get_stream,
        "A stream's status and stats, with ai-runner's status event (`status`)",
        responses={200: StreamInfo, 404: ERR},
    ),
    Route(
        "DELETE",
        STREAM_BY_ID,
        delete_stream,
        "Stop a stream",
        responses={200: StopStreamResponse, 404: ERR},
    ),
    Route(
        "POST",
        "/stream/{id}/update-prompts",
        update_prompts,
        "Replace the stream's prompts (and parameters) mid-stream",
        request_model=UpdatePromptsRequest,
        responses={200: UpdatePromptsResponse, 400: ERR, 404: ERR},
    ),
    Route(
        "POST",
        "/stream/{id}/params",
        update_params,
        "Update the stream's params (the start's params shape; as a control message)",
        request_model=StreamParams,
        responses={200: UpdatePromptsResponse, 400: ERR, 404: ERR},
    ),
    Route(
        "GET",
        "/stream/{id}/worker",
        get_worker,
        "The stream's worker(s)",
        aliases=("/stream/{id}/workers",),
        responses={200: WorkerStatusResponse, 404: ERR},
    ),
    Route(
        "POST",
        "/stream/{id}/restart-worker",
        restart_worker,
        "Restart the stream's worker(s)",
        aliases=("/stream/{id}/restart-workers",),
        responses={200: RestartWorkerResponse, 404: ERR},
    ),
    Route(
        "GET",
        "/stream/{id}/stats",
        stream_stats,
        "A stream's stats (fps, dropped, latency)",
        responses={200: ("application/json", STREAM_STATS_SCHEMA), 404: ERR},
    ),
    Route(
        "GET",
        "/stream/{id}/workspace-info",
        workspace_info,
        "The workspace the stream's workers run in",
        responses={200: WorkspaceInfoResponse, 404: ERR},
    ),
)


def setup_routes(app: web.Application) -> None:
    add_routes(app, "streams", ROUTES)
