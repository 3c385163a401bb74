"""Bodies of `POST /offer` and of the page's config (pydantic: parsed, validated, in /openapi.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.streams.models import Dimension, GivesPrompts, PromptsValue, StreamId


class SessionDescription(BaseModel):
    sdp: str = Field(..., min_length=1, description="the offer's SDP")
    type: Literal["offer"] = "offer"


class Resolution(BaseModel):
    width: Dimension = 512
    height: Dimension = 512


class OfferRequest(GivesPrompts, BaseModel):
    """`POST /offer`: a peer's offer, the prompts to run (default: invert) and the processing size."""

    model_config = ConfigDict(extra="allow")

    offer: SessionDescription
    prompts: PromptsValue | None = Field(
        None, description="a list of API-format prompts (or one, or a JSON string)"
    )
    prompt: PromptsValue | None = Field(None, description="one prompt, as `prompts` takes it")
    resolution: Resolution = Field(default_factory=Resolution, description="the size frames are processed at")
    stream_id: StreamId = Field(None, description="the stream's id; by default a new `webrtc-...` id")


class OfferAnswer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    stream_id: str = Field(..., description="the stream this peer connection is: GET /stream/{stream_id}")


class IceServerInfo(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class WebRTCConfig(BaseModel):
    """`GET /webrtc/config`: what the page's RTCPeerConnection is configured with."""

    iceServers: list[IceServerInfo]  # noqa: N815 - the browser's RTCConfiguration name
