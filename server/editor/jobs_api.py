"""ComfyUI's `/api/jobs`: the queue and the history as one list of jobs, filtered, sorted and paged,
as the editor's queue panel and assets panel read them (ComfyUI's `comfy_execution/jobs.py` gives the
shapes: `{"jobs": [...], "pagination": {offset, limit, total, has_more}}`), one job in full
(`/api/jobs/{id}`), and cancelling jobs whatever their state (`/api/jobs/{id}/cancel`,
`/api/jobs/cancel`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from comfystream import json_limits
from server.http.routes import Route
from server.jobs.queue import QueueItem
from server.jobs.scheduler import JOB_SCHEDULER_KEY

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
)
ALL_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
HISTORY_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})
PREVIEWABLE = frozenset({"images", "video", "audio", "3d", "text"})
THREE_D = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
TEXT_FILES = (".txt", ".md", ".json")


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _metadata(extra_data: dict[str, Any]) -> tuple[Any, Any]:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
    return extra_data.get("create_time"), workflow.get("id") if isinstance(workflow, dict) else None


def _previewable(media_type: str, item: dict[str, Any]) -> bool:
    if media_type in PREVIEWABLE:
        return True
    fmt = str(item.get("format", ""))
    if fmt.startswith(("video/", "audio/")):
        return True
    return str(item.get("filename", "")).lower().endswith(THREE_D + TEXT_FILES)


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, int, dict[str, Any] | None]:
    """(outputs count, previewable count, the preview): a saved visual output first, then any other
    visual one, then a text file, as ComfyUI picks it."""
    count = previewable = 0
    saved = other = text = None
    for node_id, node_out in outputs.items():
        if not isinstance(node_out, dict):
            continue
        for media_type, items in node_out.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if not _previewable(media_type, item):
                    continue
                previewable += 1
                enriched = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", media_type)}
                is_text = media_type == "text" or str(item.get("filename", "")).lower().endswith(TEXT_FILES)
                if is_text:
                    text = text or enriched
                elif item.get("type") == "output":
                    saved = saved or enriched
                else:
                    other = other or enriched
    return count, previewable, saved or other or text


def queue_job(item: QueueItem, status: str, full: bool = False) -> dict[str, Any]:
    create_time, workflow_id = _metadata(item.extra_data)
    job = _prune(
        {
            "id": item.prompt_id,
            "status": status,
            "priority": item.number,
            "create_time": create_time,
            "outputs_count": 0,
            "previewable_outputs_count": 0,
            "workflow_id": workflow_id,
        }
    )
    if full:
        job["workflow"] = {"prompt": item.prompt, "extra_data": item.extra_data}
    return job


def history_job(prompt_id: str, entry: dict[str, Any], full: bool = False) -> dict[str, Any]:
    number, _, prompt, extra_data, _ = entry["prompt"]
    create_time, workflow_id = _metadata(extra_data)
    status_info = entry.get("status") or {}
    start = end = error = None
    interrupted = False
    for message in status_info.get("messages", []):
        if not (isinstance(message, list | tuple) and len(message) >= 2 and isinstance(message[1], dict)):
            continue
        name, data = message[0], message[1]
        if name == "execution_start":
            start = data.get("timestamp")
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            error = data if name == "execution_error" else error
            interrupted = interrupted or name == "execution_interrupted"
    if status_info.get("status_str") == "error":
        status = CANCELLED if interrupted else FAILED
    else:
        status = COMPLETED
    outputs = entry.get("outputs") or {}
    count, previewable, preview = outputs_summary(outputs)
    job = _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": number,
            "create_time": create_time,
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "previewable_outputs_count": previewable,
            "preview_output": preview,
            "workflow_id": workflow_id,
        }
    )
    if full:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def all_jobs(scheduler: Any, statuses: set[str]) -> list[dict[str, Any]]:
    queue = scheduler.queue
    jobs: list[dict[str, Any]] = []
    if IN_PROGRESS in statuses:
        jobs += [queue_job(item, IN_PROGRESS) for item in queue.running.values()]
    if PENDING in statuses:
        jobs += [queue_job(item, PENDING) for item in queue.pending()]
    if statuses & HISTORY_STATUSES:
        for prompt_id, entry in queue.history.items():
            job = history_job(prompt_id, entry)
            if job["status"] in statuses:
                jobs.append(job)
    return jobs


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def list_jobs(request: web.Request) -> web.Response:
    query = request.query
    statuses = set(ALL_STATUSES)
    if query.get("status"):
        statuses = {s.strip().lower() for s in query["status"].split(",") if s.strip()}
        invalid = sorted(statuses - set(ALL_STATUSES))
        if invalid:
            return _bad(
                f"Invalid status value(s): {', '.join(invalid)}. Valid values: {', '.join(ALL_STATUSES)}"
            )
    sort_by = query.get("sort_by", "created_at").lower()
    sort_order = query.get("sort_order", "desc").lower()
    if sort_by not in ("created_at", "execution_duration"):
        return _bad("sort_by must be 'created_at' or 'execution_duration'")
    if sort_order not in ("asc", "desc"):
        return _bad("sort_order must be 'asc' or 'desc'")
    limit: int | None = None
    try:
        if "limit" in query:
            limit = int(query["limit"])
            if limit <= 0:
                return _bad("limit must be a positive integer")
        offset = max(0, int(query.get("offset", 0)))
    except ValueError:
        return _bad("limit and offset must be integers")

    jobs = all_jobs(request.app[JOB_SCHEDULER_KEY], statuses)
    if query.get("workflow_id"):
        jobs = [j for j in jobs if j.get("workflow_id") == query["workflow_id"]]
    if sort_by == "execution_duration":

        def key(job: dict[str, Any]) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return end - start if start and end else 0

    else:

        def key(job: dict[str, Any]) -> float:
            return job.get("create_time") or 0

    jobs.sort(key=key, reverse=sort_order == "desc")
    total = len(jobs)
    page = jobs[offset:]
    if limit is not None:
        page = page[:limit]
    return web.json_response(
        {
            "jobs": page,
            "pagination": {
                "offset": offset,
                "limit": limit,
                "total": total,
                "has_more": offset + len(page) < total,
            },
        },
        dumps=_dumps,
    )


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    queue = request.app[JOB_SCHEDULER_KEY].queue
    if job_id in queue.history:
        return web.json_response(history_job(job_id, queue.history[job_id], full=True), dumps=_dumps)
    if job_id in queue.running:
        return web.json_response(queue_job(queue.running[job_id], IN_PROGRESS, full=True), dumps=_dumps)
    for item in queue.pending():
        if item.prompt_id == job_id:
            return web.json_response(queue_job(item, PENDING, full=True), dumps=_dumps)
    return web.json_response({"error": "Job not found"}, status=404)


def _cancel(scheduler: Any, job_id: str) -> bool:
    """Interrupt it when running, drop it when pending; a finished or unknown id is a no-op."""
    if job_id in scheduler.queue.running:
        return bool(scheduler.interrupt(job_id))
    return bool(scheduler.delete_pending([job_id]))


async def cancel_job(request: web.Request) -> web.Response:
    return web.json_response(
        {"cancelled": _cancel(request.app[JOB_SCHEDULER_KEY], request.match_info["job_id"])}
    )


async def cancel_jobs(request: web.Request) -> web.Response:
    try:
        body = await request.json(loads=json_limits.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _bad("Request body must be valid JSON")
    ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _bad("job_ids must be a list of job ids")
    scheduler = request.app[JOB_SCHEDULER_KEY]
    cancelled = [_cancel(scheduler, job_id) for job_id in ids]
    return web.json_response({"cancelled": any(cancelled)})


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)  # a custom node's ui values need not be JSON types


# Registered as ComfyUI registers them: under /api only (a bare /jobs would shadow the dashboard's
# /jobs/events).
ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/jobs",
        list_jobs,
        "Running, pending and finished jobs, filtered and paged (ComfyUI)",
        responses={200: "application/json", 400: None},
    ),
    Route(
        "POST",
        "/jobs/cancel",
        cancel_jobs,
        "Cancel jobs by id, whatever their state (ComfyUI)",
        responses={200: "application/json", 400: None},
    ),
    # Not `cancel`: a 405 on /jobs/cancel would advertise GET in its Allow header.
    Route(
        "GET",
        "/jobs/{job_id:(?!cancel$)[^/]+}",
        get_job,
        "One job with its outputs and workflow (ComfyUI)",
        responses={200: "application/json", 404: None},
    ),
    Route("POST", "/jobs/{job_id}/cancel", cancel_job, "Cancel one job, whatever its state (ComfyUI)"),
)
