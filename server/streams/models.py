"""Request and response bodies of the stream API (pydantic): parsed, validated, and in /openapi.json."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
)

from server.livepeer.gateway_params import unwrap_params

# Sizes must be even: H.264 (yuv420p) cannot encode odd widths or heights.
MIN_SIZE = 16
MAX_SIZE = 4096
STREAM_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def _integer(value: Any) -> Any:
    """Accept an int or an integer string (gateways send both); reject bools, floats and the rest."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        return int(value.strip())
    if isinstance(value, int):
        return value
    raise ValueError(f"must be an integer, got {type(value).__name__}")


Dimension = Annotated[
    int,
    Field(ge=MIN_SIZE, le=MAX_SIZE, multiple_of=2, description="pixels, even, 16..4096"),
    BeforeValidator(_integer),
    WithJsonSchema({"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE, "multipleOf": 2}),
]
LatencyBudget = Annotated[float, Field(gt=0, le=60_000)]


def _prompt_shape(value: Any) -> Any:
    """A prompt is a JSON string, an object, or a list of them; the engine checks the rest."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str | dict) for v in items):
        raise ValueError("a prompt must be a JSON string or an object (or a list of them)")
    return value


_ONE_PROMPT_SCHEMA = [{"type": "string", "description": "API-format prompt as JSON"}, {"type": "object"}]
# One validator rather than a union, so that an error names the field, not a union member.
PromptsValue = Annotated[
    Any,
    AfterValidator(_prompt_shape),
    WithJsonSchema(
        {"anyOf": [*_ONE_PROMPT_SCHEMA, {"type": "array", "items": {"anyOf": _ONE_PROMPT_SCHEMA}}]}
    ),
]


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return value  # the field's type check reports it
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _check_stream_id(value: str | None) -> str | None:
    if value is not None and not STREAM_ID_PATTERN.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and . _ : @ -")
    return value


def _max_framerate(value: Any) -> Any:
    """pytrickle's rule: an integer (or integer string) 1..60."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    try:
        fps = int(value)
    except (TypeError, ValueError):
        raise ValueError("max_framerate must be a valid integer") from None
    if not 1 <= fps <= 60:
        raise ValueError("max_framerate must be 1..60")
    return fps


def _flag(value: Any) -> Any:
    """pytrickle's boolean: a bool, an int, or "true"/"1"/"yes" / "false"/"0"/"no"."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError("must be a boolean")


MaxFramerate = Annotated[
    int | None,
    BeforeValidator(_max_framerate),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 60}),
]
Flag = Annotated[bool | None, BeforeValidator(_flag), WithJsonSchema({"type": "boolean"})]
TrickleUrl = Annotated[str, BeforeValidator(_check_url)]
OptionalTrickleUrl = Annotated[str | None, BeforeValidator(_check_url)]
StreamId = Annotated[str | None, AfterValidator(_check_stream_id)]


def _operator_only(value: str | None) -> str | None:
    if value is not None:
        raise ValueError(
            "a worker's working directory is set by the server's operator (--workspace), not by a request"
        )
    return value


# A setting that touches the machine (where a worker runs, what files it sees): refused in requests.
OperatorOnly = Annotated[str | None, AfterValidator(_operator_only)]


class GivesPrompts:
    """A body with `prompt` and `prompts` fields."""

    def prompt_value(self) -> Any:
        """The prompt(s) given, whichever field holds them (`prompts` first); None when neither does."""
        return self.prompts if self.prompts is not None else self.prompt  # type: ignore[attr-defined]


class StreamParams(GivesPrompts, BaseModel):
    """`params` of a stream start (and the body of a params update): size, prompts, architecture."""

    model_config = ConfigDict(extra="allow")

    width: Dimension = 512
    height: Dimension = 512
    prompt: PromptsValue | None = Field(None, description="one API-format prompt, usually as a JSON string")
    prompts: PromptsValue | None = Field(None, description="a list of prompts, or a JSON string of one")
    dedicated_worker: StrictBool = Field(
        True, description="a worker process of its own (ProcessPoolPipeline)"
    )
    use_prompt_worker: StrictBool = Field(
        False, description="one warm worker per prompt (PromptWorkerPipeline)"
    )
    warmup: StrictBool | None = Field(None, description="on an update: warm up even if no size changed")
    max_latency_ms: LatencyBudget | None = Field(
        None,
        description="latency budget (ms, ingest to publish): a frame that could not come out within "
        "it is skipped; default: the server's --max-latency-ms",
    )
    cwd: OperatorOnly = Field(
        None, description="refused: the workers' directory is the operator's --workspace, never a request's"
    )
    disable_cuda_malloc: StrictBool | None = None
    gpu_only: StrictBool | None = None
    max_framerate: MaxFramerate = Field(
        None, description="at most this many input frames per second go to the worker (1..60)"
    )
    detect_out_resolution: Flag = Field(
        None,
        description="the output takes the processed frames' size (default); false: the stream's width x height",
    )


def _start_params(value: Any) -> Any:
    """`params: null` is no params (pytrickle), and the gateway's wrappings come off."""
    value = unwrap_params(value)
    return {} if value is None else value


class StartStreamRequest(BaseModel):
    """`POST /stream/start` and `POST /live-video-to-video`: the gateway's start request.

    Its fields are closed (a misspelled URL would otherwise start a stream with no input): these
    are what go-livepeer's BYOC orchestrator sends (byoc/stream_orchestrator.go: the channel URLs,
    `gateway_request_id`, and the gateway's `params`) and ai-runner's live-video-to-video body
    (`model_id`, `manifest_id`, `stream_id`, `request_id`). What a pipeline takes goes in `params`,
    which stays open."""

    model_config = ConfigDict(extra="forbid")

    subscribe_url: OptionalTrickleUrl = Field(
        None, description="trickle channel to read the input video from (none: a stream without video input)"
    )
    publish_url: OptionalTrickleUrl = Field(
        None, description="trickle channel to publish the processed video to (none: no video output)"
    )
    control_url: OptionalTrickleUrl = Field(
        None, description="trickle channel of control messages (params updates)"
    )
    events_url: OptionalTrickleUrl = Field(
        None, description="trickle channel this server publishes events on"
    )
    data_url: OptionalTrickleUrl = Field(
        None,
        description="trickle channel this server publishes what the workflow's nodes say per frame on "
        "(their ui but files, as application/jsonl: one JSON array of items a segment)",
    )
    gateway_request_id: StreamId = Field(
        None, description="the stream's id (also accepted: request_id, stream_id, the X-Stream-Id header)"
    )
    request_id: StreamId = None
    stream_id: StreamId = None
    manifest_id: str | None = None
    model_id: str | None = Field(None, description="ai-runner's pipeline name; accepted, not used")
    params: Annotated[StreamParams, BeforeValidator(_start_params)] = Field(
        default_factory=StreamParams,
        description="the stream's params (null: none); the gateway's {\"prompt\": params} wrapping is undone",
    )

    def chosen_id(self) -> str | None:
        return self.gateway_request_id or self.request_id or self.stream_id


class CreateStreamRequest(StreamParams):
    """`POST /stream`: the flat form, the stream's params beside its URLs."""

    subscribe_url: OptionalTrickleUrl = None
    publish_url: OptionalTrickleUrl = None
    control_url: OptionalTrickleUrl = None
    events_url: OptionalTrickleUrl = None
    data_url: OptionalTrickleUrl = None
    gateway_request_id: StreamId = None
    request_id: StreamId = None
    stream_id: StreamId = None

    def to_start(self) -> StartStreamRequest:
        urls_and_ids = set(StartStreamRequest.model_fields) - {"params", "manifest_id", "model_id"}
        top = {k: getattr(self, k) for k in urls_and_ids}
        params = {k: v for k, v in self.model_dump(exclude_unset=True).items() if k not in urls_and_ids}
        return StartStreamRequest.model_validate({**top, "params": params})


class UpdateParameters(BaseModel):
    """`parameters` of an update: a change of size restarts the worker at the new size."""

    model_config = ConfigDict(extra="allow")

    width: Dimension | None = None
    height: Dimension | None = None
    warmup: StrictBool = Field(False, description="warm up after the update even when nothing requires it")
    max_latency_ms: LatencyBudget | None = Field(None, description="a new latency budget (ms)")
    cwd: OperatorOnly = None
    disable_cuda_malloc: StrictBool | None = None
    gpu_only: StrictBool | None = None


class UpdatePromptsRequest(GivesPrompts, BaseModel):
    """`POST /stream/{id}/update-prompts`."""

    prompt: PromptsValue | None = None
    prompts: PromptsValue | None = None
    parameters: UpdateParameters | None = None


class StopStreamRequest(BaseModel):
    """`POST /stream/stop` (BYOC): the stream to stop; with none, the only one running."""

    model_config = ConfigDict(extra="allow")

    gateway_request_id: str | None = None
    request_id: str | None = None
    stream_id: str | None = None

    def chosen_id(self) -> str | None:
        return self.gateway_request_id or self.request_id or self.stream_id


# ---- responses -----------------------------------------------------------------------------------


class StreamConfig(BaseModel):
    subscribe_url: str | None = None
    publish_url: str | None = None
    control_url: str | None = None
    events_url: str | None = None
    data_url: str | None = None
    width: int
    height: int
    dedicated_worker: bool
    use_prompt_worker: bool
    pipeline_type: Literal["ProcessPoolPipeline", "PromptWorkerPipeline", "Pipeline"]
    architecture: Literal["dedicated_worker_per_stream", "prompt_worker_per_prompt", "shared_pipeline"]
    prompts_set: bool = Field(
        ..., description="true when the request gave prompts (false: the default prompt)"
    )
    prompt_count: int
    max_framerate: int | None = None
    detect_out_resolution: bool = True


class StartStreamResponse(BaseModel):
    status: Literal["success"] = "success"
    message: str
    request_id: str
    config: StreamConfig


class StreamStats(BaseModel):
    model_config = ConfigDict(extra="allow")

    received: int = 0
    processed: int = 0
    dropped: int = 0
    passed_through: int = 0
    mismatched: int = 0
    published: int = 0
    fps_in: float = 0.0
    fps_out: float = 0.0
    input_fps: float = Field(0.0, description="frames per second arriving (decoded)")
    worker_fps: float | None = Field(None, description="what the worker can do: 1 / its time per frame")
    output_fps: float = Field(0.0, description="frames per second leaving the pipeline")
    skipped_late: int = Field(0, description="skipped: could not come out within the latency budget")
    skipped_overload: int = Field(0, description="skipped: the worker is slower than the input")
    skipped_error: int = Field(0, description="skipped: the workflow failed on them")
    skip_ratio: float = Field(0.0, description="skipped / received over the last seconds")
    latency_ms: dict[str, float | None] = Field(
        default_factory=dict, description="p50/p95/p99 latency (ms), ingest to publish, server-side"
    )
    max_latency_ms: float | None = None


class WorkerStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    pid: int | None = None
    device: str | None = None
    state: str | None = None
    uptime_s: float | None = None
    restarts: int = 0
    frames_processed: int = 0
    fps: float = 0.0


StreamState = Literal["starting", "running", "stopping", "stopped", "error"]
Transport = Literal["trickle", "webrtc"]


class StreamInfo(BaseModel):
    stream_id: str
    transport: Transport = Field(..., description="how its frames come and go: trickle channels or WebRTC")
    state: StreamState
    created_at: float = Field(..., description="unix time")
    uptime_s: float
    stop_reason: str | None = None
    stop_kind: str | None = Field(
        None,
        description="once ended: what ended it (request, shutdown, input_ended, error, ...)",
    )
    error: str | None = None
    notice: str | None = Field(
        None, description="what the stream is waiting for, while it waits (e.g. its input channel)"
    )
    prompts_count: int
    prompt_updates: int = Field(0, description="updates applied (REST, params, control channel)")
    config: StreamConfig
    stats: StreamStats
    workers: list[WorkerStatus]
    status: dict[str, Any] | None = Field(
        None, description="ai-runner's status event for the stream (state, input/inference fps, errors)"
    )


class StreamListResponse(BaseModel):
    count: int
    max_streams: int
    streams: list[StreamInfo]
    ended: list[StreamInfo] = Field(
        default_factory=list,
        description="the latest streams that ended by themselves (an error, their input ending), newest "
        "last: a stream never just disappears without its reason",
    )


class StopStreamResponse(BaseModel):
    status: Literal["success"] = "success"
    message: str
    request_id: str
    stats: StreamStats | None = None


class UpdatePromptsResponse(BaseModel):
    status: Literal["success"] = "success"
    message: str
    request_id: str
    prompts_count: int
    parameters_updated: bool
    warmup_performed: bool


class WorkerStatusResponse(BaseModel):
    success: bool = True
    stream_id: str
    pipeline_type: str
    worker: WorkerStatus | None = Field(None, description="the active worker")
    workers: list[WorkerStatus]


class RestartWorkerResponse(BaseModel):
    status: Literal["success"] = "success"
    message: str
    request_id: str
    workers: list[WorkerStatus]


HealthStatus = Literal["LOADING", "IDLE", "OK", "ERROR"]


class StreamStatusResponse(BaseModel):
    """`GET /stream/status` (BYOC runner contract): pytrickle's fields (its pipeline state and the
    current stream's client, fps and params) and ours (every stream)."""

    status: HealthStatus
    state: HealthStatus
    error_message: str | None = None
    pipeline_ready: bool
    active_streams: int
    startup_complete: bool
    pipeline_state: str
    additional_info: dict[str, Any] = Field(default_factory=dict)
    client_active: bool
    client_running: bool
    fps: dict[str, float] | None = None
    current_params: dict[str, Any] | None = None
    processing_active: bool
    stream_count: int
    message: str | None = None
    current_stream: StreamInfo | None = None
    all_streams: dict[str, StreamInfo] = Field(default_factory=dict)
