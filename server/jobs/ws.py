"""`GET /ws?clientId=`: ComfyUI's WebSocket. A `status` message with the `sid` on connect, then the
events of that client's prompts only (each with its `prompt_id`), `status` broadcasts when the
queue changes, and binary preview / progress-text frames (server/jobs/binary.py).

Feature flags are negotiated as ComfyUI does: a client's first message may be
`{"type": "feature_flags", "data": {...}}`; the server answers with its own flags.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from comfystream import json_limits
from comfystream.pipeline import jobs as jm
from server.jobs import binary
from server.jobs.queue import QueueItem
from server.jobs.scheduler import JOB_SCHEDULER_KEY

logger = logging.getLogger(__name__)

MAX_UPLOAD_SIZE = 32 * 1024**2  # the app's client_max_size

SERVER_FEATURE_FLAGS: dict[str, Any] = {
    "supports_preview_metadata": True,
    "supports_progress_text_metadata": True,
    "max_upload_size": MAX_UPLOAD_SIZE,
}


def queue_info(remaining: int) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": remaining}}


@dataclass(eq=False)
class WsClient:
    sid: str
    ws: web.WebSocketResponse
    queue: asyncio.Queue[str | bytes | None]
    features: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0

    def supports(self, name: str) -> bool:
        return self.features.get(name) is True

    def put(self, message: str | bytes | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # a slow client loses its oldest message, never stalls the others
            self.dropped += 1
            if self.dropped in (1, 100, 10000):
                logger.warning("ws client %s is slow: %d message(s) dropped", self.sid, self.dropped)
        self.queue.put_nowait(message)


class WsHub:
    """The connected clients by sid, and the job sink that routes events to them."""

    def __init__(self, queue_size: int = 10000):
        self.queue_size = queue_size
        self.clients: dict[str, WsClient] = {}

    # -- sending -------------------------------------------------------------------------------

    def send_json(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """To `sid`, or to every client with None (ComfyUI's broadcast)."""
        message = json.dumps({"type": event, "data": data}, default=str)
        for client in self._targets(sid):
            client.put(message)

    def _targets(self, sid: str | None) -> list[WsClient]:
        if sid is None:
            return list(self.clients.values())
        client = self.clients.get(sid)
        return [client] if client is not None else []

    def send_preview(self, data: dict[str, Any], sid: str) -> None:
        for client in self._targets(sid):
            image_type = str(data.get("image_type") or "JPEG")
            if client.supports("supports_preview_metadata"):
                client.put(
                    binary.preview_with_metadata(
                        image_type, data["image"], data["prompt_id"], data.get("node")
                    )
                )
            else:
                client.put(binary.preview_image(image_type, data["image"]))

    def send_progress_text(self, data: dict[str, Any], sid: str) -> None:
        for client in self._targets(sid):
            text, node = data.get("text", ""), data.get("node")
            if client.supports("supports_progress_text_metadata"):
                client.put(binary.progress_text(text, node, data.get("prompt_id")))
            else:
                # Legacy clients parse only the layout without prompt_id; the JSON twin gives them
                # the prompt_id too (ComfyUI clients pass unknown JSON types on untouched).
                client.put(binary.progress_text(text, node))
                client.put(
                    json.dumps(
                        {
                            "type": "progress_text",
                            "data": {"node": node, "text": text, "prompt_id": data.get("prompt_id")},
                        }
                    )
                )

    # -- JobSink -------------------------------------------------------------------------------

    def on_job_event(self, item: QueueItem, event: str, data: dict[str, Any]) -> None:
        sid = item.client_id
        if sid is None:
            return  # ComfyUI sends a prompt's events to the client that queued it only
        if event == "preview":
            self.send_preview(data, sid)
        elif event == "progress_text":
            self.send_progress_text(data, sid)
        else:
            self.send_json(event, data, sid)

    def on_job_done(self, item: QueueItem, entry: dict[str, Any], finished: jm.JobFinished) -> None:
        pass

    def on_queue_changed(self, remaining: int) -> None:
        self.send_json("status", {"status": queue_info(remaining)})

    # -- lifecycle -----------------------------------------------------------------------------

    async def close(self) -> None:
        for client in list(self.clients.values()):
            client.put(None)
            await client.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def _pump(client: WsClient) -> None:
    """Writes the client's messages in order; ends on None or a closed socket."""
    while True:
        message = await client.queue.get()
        if message is None or client.ws.closed:
            return
        try:
            if isinstance(message, bytes):
                await client.ws.send_bytes(message)
            else:
                await client.ws.send_str(message)
        except (ConnectionResetError, RuntimeError) as exc:
            logger.debug("ws client %s: send failed: %s", client.sid, exc)
            return


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[WS_HUB_KEY]
    scheduler = request.app[JOB_SCHEDULER_KEY]
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    sid = request.query.get("clientId") or uuid.uuid4().hex
    previous = hub.clients.pop(sid, None)
    if previous is not None:
        previous.put(None)  # the same client reconnected: the new socket takes over
    client = WsClient(sid, ws, asyncio.Queue(hub.queue_size))
    hub.clients[sid] = client
    logger.debug("ws client %s connected", sid)
    client.put(
        json.dumps({"type": "status", "data": {"status": queue_info(scheduler.queue.remaining), "sid": sid}})
    )
    # A client that reconnects while its prompts run learns where they are.
    for item in list(scheduler.queue.running.values()):
        node = scheduler.running_node(item.prompt_id)
        if item.client_id == sid and node is not None:
            client.put(
                json.dumps(
                    {
                        "type": "executing",
                        "data": {"node": node, "display_node": node, "prompt_id": item.prompt_id},
                    }
                )
            )
    pump = asyncio.get_running_loop().create_task(_pump(client), name=f"ws-{sid}")
    try:
        first = True
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json_limits.loads(msg.data)
                except json.JSONDecodeError:
                    logger.warning("ws client %s sent invalid JSON", sid)
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data")
                    client.features = dict(flags) if isinstance(flags, dict) else {}
                    client.put(json.dumps({"type": "feature_flags", "data": SERVER_FEATURE_FLAGS}))
                first = False
            elif msg.type == aiohttp.WSMsgType.ERROR:
                logger.warning("ws client %s: connection closed with %s", sid, ws.exception())
    finally:
        if hub.clients.get(sid) is client:
            del hub.clients[sid]
        client.put(None)
        try:
            await asyncio.wait_for(pump, 1.0)
        except (TimeoutError, asyncio.CancelledError):
            pump.cancel()
        logger.debug("ws client %s disconnected", sid)
    return ws


# Made by the jobs feature's setup_routes (other features may add their sinks at startup).
WS_HUB_KEY = web.AppKey("ws_hub", WsHub)
