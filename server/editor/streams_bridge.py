"""From the editor to a live stream: `POST /api/comfystream/streams/{id}/prompt` takes the API
prompt of the workflow open in the editor (the frontend's own graph -> prompt conversion), turns
its image input and output into the stream's frame input and output (comfystream's
`convert_prompt`: LoadImage -> LoadTensor, PreviewImage/SaveImage -> SaveTensor, node ids kept), and
swaps it in on the stream at a frame boundary. A rejected prompt is answered 400 with ComfyUI's
`node_errors` keyed by the editor's node ids, and the stream runs on with its old prompt."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from comfystream import json_limits
from comfystream.engine.convert import PromptConversionError, convert_prompt
from server.http.routes import Route
from server.jobs.submit import comfy_error
from server.streams.api_errors import api_handler
from server.streams.manager import STREAM_MANAGER_KEY

logger = logging.getLogger(__name__)


def _rejected(kind: str, message: str, details: str) -> web.Response:
    return web.json_response({"error": comfy_error(kind, message, details), "node_errors": {}}, status=400)


@api_handler
async def apply_prompt(request: web.Request) -> web.Response:
    stream_id = request.match_info["id"]
    manager = request.app[STREAM_MANAGER_KEY]
    manager.get(stream_id)  # 404 before a 400 about the body
    try:
        body = await request.json(loads=json_limits.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _rejected("invalid_prompt", "Invalid prompt", "the body must be JSON")
    prompt: Any = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(prompt, dict) or not prompt:
        return _rejected("invalid_prompt", "Invalid prompt", 'give {"prompt": {...}}, an API-format prompt')
    try:
        streaming = convert_prompt(prompt)
    except PromptConversionError as exc:
        logger.info("stream %s: the editor's workflow cannot stream: %s", stream_id, exc)
        return _rejected("prompt_not_streamable", "This workflow cannot run on a stream", str(exc))
    outcome = await manager.update(stream_id, streaming, None, source="editor")
    logger.info("stream %s: prompt from the editor applied", stream_id)
    return web.json_response(
        {
            "stream_id": stream_id,
            "prompt": streaming,
            "prompts_count": outcome.prompts_count,
            "warmup_performed": outcome.warmup_performed,
        }
    )


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/comfystream/streams/{id}/prompt",
        apply_prompt,
        "Run the editor's workflow on a live stream (its image input and output become the stream's)",
        responses={200: "application/json", 400: None, 404: None, 503: None},
    ),
)
