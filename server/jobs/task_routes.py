"""`POST /tasks` -> `{"taskId"}` at once; `GET /progress/{taskId}`: the task's SSE stream.

A task's input image comes as a multipart upload (file field `image`, beside the fields `prompt`
(JSON), `client_id`, `input_node`) or as the name of an image in the input folder (`input_image`
in a JSON body, or a multipart text field). It goes into the prompt's `image` input of
`input_node`, else of its PrimaryInputLoadImage nodes, else of its only LoadImage node.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from typing import Any

from aiohttp import web

from comfystream import json_limits
from comfystream.engine import parse_prompt
from comfystream.prompts import PromptFormatError
from server.http.keys import NODE_REGISTRY_KEY
from server.jobs.files import PathRefused, resolve_view_path, save_upload
from server.jobs.scheduler import JOB_SCHEDULER_KEY
from server.jobs.settings import JOB_SETTINGS_KEY
from server.jobs.sse import HeartbeatEventSource
from server.jobs.submit import PromptRequest, comfy_error, submit_prompt_async
from server.jobs.tasks import TASK_TRACKER_KEY, CreateTaskResponse

logger = logging.getLogger(__name__)

_INPUT_CLASSES = ("PrimaryInputLoadImage", "LoadImage")


class BadTask(Exception):
    def __init__(self, kind: str, message: str, details: str = ""):
        super().__init__(message)
        self.error = comfy_error(kind, message, details)


def _bad(error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({"error": error, "node_errors": node_errors or {}}, status=400)


async def _read_body(request: web.Request) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """The body's fields, and the uploaded image (filename, bytes) if there is one."""
    if request.content_type.startswith("multipart/"):
        try:
            post = await request.post()
        except ValueError as exc:  # a multipart body without its boundary, or malformed
            raise BadTask("invalid_request", "Invalid request", f"bad multipart body: {exc}") from None
        fields: dict[str, Any] = {}
        upload = None
        for key, value in post.items():
            if hasattr(value, "file"):
                if key in ("image", "input_image") and upload is None:
                    upload = (value.filename or "upload.png", value.file.read())
            else:
                fields[key] = value
        if isinstance(fields.get("prompt"), str):
            try:
                fields["prompt"] = json_limits.loads(fields["prompt"])
            except json.JSONDecodeError as exc:
                raise BadTask(
                    "invalid_prompt",
                    "Invalid prompt",
                    f"the prompt field is {json_limits.describe_error(exc)}",
                ) from None
        return fields, upload
    raw = await request.read()
    try:
        data = json_limits.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadTask(
            "invalid_json", "Invalid JSON", f"the body is {json_limits.describe_error(exc)}"
        ) from None
    if not isinstance(data, dict):
        raise BadTask("invalid_json", "Invalid request", "the body must be a JSON object")
    return data, None


def _apply_input_image(prompt: dict[str, Any], name: str, input_node: str | None) -> list[str]:
    """Set `image` of the input node(s); returns their ids."""
    if input_node is not None:
        node = prompt.get(str(input_node))
        if not isinstance(node, dict):
            raise BadTask(
                "invalid_input_node", "Invalid input node", f"the prompt has no node {input_node!r}"
            )
        targets = [str(input_node)]
    else:
        targets = []
        for cls in _INPUT_CLASSES:
            targets = [
                nid
                for nid, node in prompt.items()
                if isinstance(node, dict) and node.get("class_type") == cls
            ]
            if targets:
                break
        if not targets:
            raise BadTask(
                "invalid_input_node",
                "No input node",
                "an input image was given but the prompt has no LoadImage node",
            )
        if len(targets) > 1 and prompt[targets[0]].get("class_type") == "LoadImage":
            raise BadTask(
                "invalid_input_node",
                "Ambiguous input node",
                f"the prompt has {len(targets)} LoadImage nodes ({', '.join(targets)}): name one with input_node",
            )
    for node_id in targets:
        prompt[node_id].setdefault("inputs", {})["image"] = name
    return targets


async def create_task(request: web.Request) -> web.Response:
    settings = request.app[JOB_SETTINGS_KEY]
    scheduler = request.app[JOB_SCHEDULER_KEY]
    tracker = request.app[TASK_TRACKER_KEY]
    try:
        fields, upload = await _read_body(request)
        if fields.get("prompt") is None:
            return _bad(comfy_error("no_prompt", "No prompt provided"))
        try:
            prompt = copy.deepcopy(parse_prompt(fields["prompt"]))
        except PromptFormatError as exc:
            raise BadTask("invalid_prompt", "Invalid prompt", str(exc)) from None
        image_name = fields.get("input_image")
        if upload is not None:
            image_name = save_upload(settings, upload[1], upload[0])["name"]
        if image_name:
            try:
                path = resolve_view_path(settings, str(image_name), "input", None)
            except PathRefused as exc:
                raise BadTask("invalid_input_image", "Invalid input image", str(exc)) from None
            if not path.is_file():
                raise BadTask(
                    "invalid_input_image",
                    "Invalid input image",
                    f"no image {image_name!r} in the input folder",
                )
            _apply_input_image(prompt, str(image_name), fields.get("input_node"))
    except BadTask as exc:
        return _bad(exc.error)
    except PathRefused as exc:
        return _bad(comfy_error("invalid_input_image", "Invalid input image", str(exc)))
    client_id = fields.get("client_id")
    extra = fields.get("extra_data") if isinstance(fields.get("extra_data"), dict) else {}
    submitted = await submit_prompt_async(
        PromptRequest(
            prompt=prompt,
            prompt_id=str(uuid.uuid4()),
            client_id=str(client_id) if client_id else None,
            extra_data=extra,
        ),
        request.app[NODE_REGISTRY_KEY],
        settings,
        scheduler,
    )
    if submitted.item is None:
        return web.json_response(submitted.to_comfy(), status=400)
    task = tracker.create(submitted.item.prompt_id, submitted.item.prompt)
    logger.debug("task %s: prompt %s queued", task.task_id, task.prompt_id)
    body = CreateTaskResponse(taskId=task.task_id, prompt_id=task.prompt_id)
    return web.json_response(body.model_dump())


async def task_progress(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["task_id"]
    task = request.app[TASK_TRACKER_KEY].get(task_id)
    if task is None:
        return web.json_response(
            {"error": "Task not found", "message": f"No task {task_id!r} (unknown, or finished and expired)"},
            status=404,
        )
    queue = task.subscribe()
    try:
        backlog = task.replay(request.headers.get("Last-Event-ID"))
        if task.finished and not backlog:
            return web.Response(status=204)  # the client has it all: 204 stops an EventSource's retries
        response = HeartbeatEventSource(heartbeat_s=request.app[JOB_SETTINGS_KEY].sse_heartbeat_s)
        await response.prepare(request)
        async with response:
            try:
                for event in backlog:
                    await response.send(event.data, id=str(event.id), event=event.event)
                    if event.terminal:
                        return response
                while True:
                    ok, event = await response.next_or_gone(queue.get())
                    if not ok or event is None:
                        break
                    await response.send(event.data, id=str(event.id), event=event.event)
                    if event.terminal:
                        break
            except ConnectionResetError:
                logger.debug("task %s: subscriber gone", task_id)
        return response
    finally:
        task.unsubscribe(queue)
