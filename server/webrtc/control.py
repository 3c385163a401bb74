"""The `control` data channel: JSON requests from the peer, each answered on the same channel.

Requests and their replies (`id`, when the request has one, is echoed back):

=====================  ======================  =========================================
request ``type``       reply ``type``          fields
=====================  ======================  =========================================
``get_nodes``          ``nodes_info``          ``nodes``: {prompt_index: {node_id: info}}
``update_prompts``     ``prompts_updated``     ``prompts``/``prompt``, ``parameters``?
``update_resolution``  ``resolution_updated``  ``width``, ``height``
``pause_prompts``      ``prompts_paused``      (the worker stays warm, video passes through)
``resume_prompts``     ``prompts_resumed``
``stop_prompts``       ``prompts_stopped``     (the worker is released, video passes through)
anything else          ``error``
=====================  ======================  =========================================

Every reply has ``success``; a failed one has ``error`` (a sentence) and, for bad prompts or
parameters, the REST API's body beside it (``validation_errors``, ``node_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiortc import RTCDataChannel

from comfystream import json_limits
from server.webrtc.session import NotNow, WebRTCStream

logger = logging.getLogger(__name__)

CONTROL_LABEL = "control"

REPLY_TYPES = {
    "get_nodes": "nodes_info",
    "update_prompts": "prompts_updated",
    "update_resolution": "resolution_updated",
    "pause_prompts": "prompts_paused",
    "resume_prompts": "prompts_resumed",
    "stop_prompts": "prompts_stopped",
}

# an update's body, as `POST /stream/{id}/update-prompts` takes it -> its outcome; it raises what the
# REST route raises (pydantic's ValidationError, PromptFormatError, PromptRejected, ...)
UpdateFn = Callable[[WebRTCStream, dict[str, Any]], Awaitable[Any]]
# such an exception -> the HTTP error the REST route answers with (None: not a request error)
ErrorMapper = Callable[[Exception], web.HTTPException | None]
NodesInfo = Callable[[list[dict[str, Any]]], dict[str, Any]]


class ControlError(Exception):
    """A request that failed; `body` is merged into the reply."""

    def __init__(self, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = body or {}


def _from_http(exc: web.HTTPException) -> ControlError:
    try:
        body = json.loads(exc.text or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.pop("message", None) or exc.reason)
    body.setdefault("status", exc.status)
    return ControlError(message, body)


class ControlChannel:
    """Serves one peer's control channel: requests are handled one at a time, in order."""

    def __init__(
        self,
        stream: WebRTCStream,
        channel: RTCDataChannel,
        update: UpdateFn,
        to_http_error: ErrorMapper,
        nodes_info: NodesInfo,
    ) -> None:
        self.stream = stream
        self.channel = channel
        self._update = update
        self._to_http_error = to_http_error
        self._nodes_info = nodes_info
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._task = asyncio.create_task(self._serve(), name=f"{stream.stream_id}-control")
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", self.close)

    def close(self) -> None:
        self._task.cancel()

    async def _serve(self) -> None:
        while True:
            raw = await self._inbox.get()
            reply = await self.handle(raw)
            if self.channel.readyState != "open":
                logger.info("stream %s: control channel closed before a reply", self.stream.stream_id)
                continue
            with contextlib.suppress(Exception):
                self.channel.send(json.dumps(reply))

    async def handle(self, raw: str | bytes) -> dict[str, Any]:
        """One request -> its reply (never raises for bad input)."""
        try:
            message = json_limits.loads(raw)
        except (TypeError, ValueError) as exc:
            return {"type": "error", "success": False, "error": f"not valid JSON: {exc}"}
        if not isinstance(message, dict):
            return {"type": "error", "success": False, "error": "a control message is a JSON object"}
        kind = message.get("type")
        reply: dict[str, Any] = {"type": REPLY_TYPES.get(kind, "error"), "success": True}
        if "id" in message:
            reply["id"] = message["id"]
        handler = getattr(self, f"_on_{kind}", None) if kind in REPLY_TYPES else None
        if handler is None:
            reply.update(
                success=False, error=f"unknown control message type {kind!r}; one of {sorted(REPLY_TYPES)}"
            )
            return reply
        try:
            extra = await handler(message)
        except (ControlError, NotNow) as exc:
            reply.update(getattr(exc, "body", {}))
            reply.update(success=False, error=str(exc))
        except web.HTTPException as exc:
            err = _from_http(exc)
            reply.update(err.body)
            reply.update(success=False, error=str(err))
        except Exception as exc:
            logger.exception("stream %s: control %s failed", self.stream.stream_id, kind)
            reply.update(success=False, error=f"{type(exc).__name__}: {exc}")
        else:
            if extra:
                reply.update(extra)
        logger.info(
            "stream %s: control %s -> %s",
            self.stream.stream_id,
            kind,
            "ok" if reply["success"] else reply["error"],
        )
        return reply

    async def _apply(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            outcome = await self._update(self.stream, body)
        except web.HTTPException:
            raise
        except Exception as exc:
            mapped = self._to_http_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        spec = self.stream.spec
        return {
            "prompts_count": outcome.prompts_count,
            "parameters_updated": outcome.parameters_updated,
            "warmup_performed": outcome.warmup_performed,
            "width": spec.width,
            "height": spec.height,
        }

    async def _on_get_nodes(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"nodes": self._nodes_info(self.stream.spec.prompts)}

    async def _on_update_prompts(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("prompts") is None and message.get("prompt") is None:
            raise ControlError("missing 'prompts' (or 'prompt') in the update_prompts message")
        body = {k: message[k] for k in ("prompts", "prompt", "parameters") if k in message}
        return await self._apply(body)

    async def _on_update_resolution(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("width") is None or message.get("height") is None:
            raise ControlError("missing 'width' or 'height' in the update_resolution message")
        body = {"parameters": {"width": message["width"], "height": message["height"]}}
        return await self._apply(body)

    async def _on_pause_prompts(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.stream.pause()
        return {"mode": str(self.stream.mode)}

    async def _on_resume_prompts(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.stream.resume()
        return {"mode": str(self.stream.mode)}

    async def _on_stop_prompts(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.stream.stop_prompts()
        return {"mode": str(self.stream.mode)}
