"""WebRTC routes: `POST /offer`, the `/webrtc` page and its config.

`POST /offer` makes a stream of the peer connection: its own worker (ProcessPoolPipeline), listed
in `GET /streams` beside the trickle streams and stopped by `DELETE /stream/{id}` like them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from server.http import errors
from server.http.errors import ErrorResponse
from server.http.keys import CONFIG_KEY, NODE_REGISTRY_KEY
from server.http.routes import Route, add_routes, json_body, parse, respond
from server.streams.api_errors import api_handler, to_http_error
from server.streams.manager import STREAM_MANAGER_KEY, StreamManager
from server.streams.models import UpdatePromptsRequest
from server.streams.pipelines import check_gpu_room
from server.streams.spec import StreamSpec
from server.webrtc.control import CONTROL_LABEL, ControlChannel
from server.webrtc.ice import IceServer, parse_ice_servers, rtc_configuration, use_loopback_when_no_network
from server.webrtc.models import IceServerInfo, OfferAnswer, OfferRequest, WebRTCConfig
from server.webrtc.nodes_info import nodes_info
from server.webrtc.session import WebRTCStream

logger = logging.getLogger(__name__)

ICE_SERVERS_KEY = web.AppKey("webrtc_ice_servers", list)
STATIC_DIR = Path(__file__).resolve().parent / "static"
WEBRTC_URL_SCHEME = "webrtc:"  # a WebRTC stream's subscribe/publish "URL" in its config


def _manager(request: web.Request) -> StreamManager:
    return request.app[STREAM_MANAGER_KEY]


def _new_stream_id() -> str:
    return f"webrtc-{uuid.uuid4().hex[:12]}"


def _wire_peer(app: web.Application, stream: WebRTCStream, pc: RTCPeerConnection) -> None:
    """Tracks from the peer feed the stream; its `control` channel drives it; losing the peer stops it."""
    manager = app[STREAM_MANAGER_KEY]
    registry = app[NODE_REGISTRY_KEY]

    @pc.on("track")
    def on_track(track) -> None:
        outbound = stream.add_remote_track(track)
        if outbound is not None:
            pc.addTrack(outbound)
            logger.debug("stream %s: %s track from the peer", stream.stream_id, track.kind)

    async def update(target: WebRTCStream, body: dict) -> object:
        # What POST /stream/{id}/update-prompts does, checked by the same model and manager.
        parsed = UpdatePromptsRequest.model_validate(body)
        return await manager.update(
            target.stream_id, parsed.prompt_value(), parsed.parameters, source="webrtc"
        )

    def http_error(exc: Exception) -> web.HTTPException | None:
        return to_http_error(exc, app)

    def describe_nodes(prompts: list[dict]) -> dict:
        return nodes_info(prompts, registry.object_info())

    @pc.on("datachannel")
    def on_datachannel(channel) -> None:
        if channel.label != CONTROL_LABEL:
            logger.info("stream %s: ignoring data channel %r", stream.stream_id, channel.label)
            return
        stream.on_close(ControlChannel(stream, channel, update, http_error, describe_nodes).close)

    @pc.on("connectionstatechange")
    def on_state() -> None:
        logger.debug("stream %s: peer connection %s", stream.stream_id, pc.connectionState)
        stream.close_if_peer_gone()


def _offer_has_video(sdp: str) -> bool:
    return any(line.startswith("m=video") for line in sdp.splitlines())


@api_handler
async def offer(request: web.Request) -> web.Response:
    body = parse(OfferRequest, await json_body(request))
    manager = _manager(request)
    prompts, given = await asyncio.to_thread(manager.validate_prompts, body.prompt_value())
    if not _offer_has_video(body.offer.sdp):
        raise errors.error_response(
            web.HTTPBadRequest, "Invalid offer", "the offer has no video (m=video) section"
        )
    stream_id = body.stream_id or _new_stream_id()
    spec = StreamSpec(
        stream_id=stream_id,
        subscribe_url=f"{WEBRTC_URL_SCHEME}{stream_id}",
        publish_url=f"{WEBRTC_URL_SCHEME}{stream_id}",
        width=body.resolution.width,
        height=body.resolution.height,
        prompts=prompts,
        prompts_set=given,
        dedicated_worker=True,
        use_prompt_worker=False,
        transport="webrtc",
    )
    await check_gpu_room(request.app, spec)  # 503 with the reason when no GPU can take its worker
    pc = RTCPeerConnection(rtc_configuration(request.app[ICE_SERVERS_KEY]))
    stream = WebRTCStream(spec, pc, manager.create_pipeline)
    try:
        _wire_peer(request.app, stream, pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body.offer.sdp, type=body.offer.type))
        except (ValueError, KeyError, IndexError) as exc:
            raise errors.error_response(
                web.HTTPBadRequest, "Invalid offer", f"the offer's SDP could not be used: {exc}"
            ) from None
        # The same id and capacity checks as a trickle start; listed from here on, its events go
        # out and its end is recorded.
        manager.register(stream)
    except BaseException:
        await stream.stop("offer rejected", "rejected")  # never listed: no events, no finished entry
        raise
    try:
        await stream.start()
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException as exc:
        logger.warning("stream %s: offer failed: %r", stream_id, exc, exc_info=True)
        stream.error = stream.error or f"{type(exc).__name__}: {exc}"
        await stream.stop(f"error: {stream.error}", "error")
        if isinstance(exc, Exception) and not isinstance(exc, web.HTTPException):
            if to_http_error(exc, request.app) is None:  # not a request error: the worker did not come up
                raise errors.error_response(
                    web.HTTPInternalServerError,
                    "Stream failed to start",
                    f"stream {stream_id}: {stream.error}",
                ) from exc
        raise
    local = pc.localDescription
    logger.info("stream %s: answered (%dx%d, %d prompt(s))", stream_id, spec.width, spec.height, len(prompts))
    return respond(OfferAnswer(sdp=local.sdp, type=local.type, stream_id=stream_id))


async def webrtc_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


_ASSETS = {".js": "text/javascript", ".css": "text/css"}


async def webrtc_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if path.suffix not in _ASSETS or path.parent != STATIC_DIR or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": _ASSETS[path.suffix], "Cache-Control": "no-cache"})


async def webrtc_config(request: web.Request) -> web.Response:
    servers: list[IceServer] = request.app[ICE_SERVERS_KEY]
    return respond(WebRTCConfig(iceServers=[IceServerInfo.model_validate(s.to_browser()) for s in servers]))


ERR = ErrorResponse
ROUTES = (
    Route(
        "POST",
        "/offer",
        offer,
        "Start a WebRTC stream: the peer's offer in, the answer out (a dedicated worker per peer)",
        request_model=OfferRequest,
        responses={200: OfferAnswer, 400: ERR, 409: ERR, 500: ERR, 503: ERR},
    ),
    Route("GET", "/webrtc/config", webrtc_config, "The page's ICE servers", responses={200: WebRTCConfig}),
    Route("GET", "/webrtc", webrtc_page, allow_head=True),
    Route("GET", r"/webrtc/{name:[A-Za-z0-9_-]+\.(?:js|css)}", webrtc_asset, allow_head=True),
)


def setup_routes(app: web.Application) -> None:
    config = app[CONFIG_KEY]
    app[ICE_SERVERS_KEY] = parse_ice_servers(list(getattr(config, "ice_servers", None) or []))
    use_loopback_when_no_network()
    add_routes(app, "webrtc", ROUTES)
