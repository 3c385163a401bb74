"""Messages on the pipe between the server and a worker process (pickled by multiprocessing).

The control messages (Ping/Pong, StatusRequest/Reply, Stop, Started/Ready/StartupFailed) and the
frame work's are here; the job work's are in workers/job_messages.py. The child's loop dispatches
on the message's type, one handler per type (workers/child.py).

Only small things cross here: slot indexes, frame ids, prompts, status. Frame pixels stay in
the shared-memory ring (workers/ring.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# -- server -> worker ---------------------------------------------------------------------------


@dataclass(slots=True)
class ProcessFrame:
    """The input region of `slot` in `channel`'s ring holds frame `frame_id`."""

    channel: str
    frame_id: int
    slot: int


@dataclass(slots=True)
class OpenChannel:
    """Attach a stream's ring, compile its prompts and warm up; answered with a Reply."""

    request_id: int
    channel: str
    ring_name: str
    slots: int
    width: int
    height: int
    prompts: list[dict[str, Any]]
    active: int = 0
    warmup_frames: int = 0


@dataclass(slots=True)
class CloseChannel:
    request_id: int
    channel: str


@dataclass(slots=True)
class UpdatePrompts:
    """Validate, compile and dry-run `prompts` beside the running ones, then swap at a frame boundary."""

    request_id: int
    channel: str
    prompts: list[dict[str, Any]]
    active: int = 0
    warmup_frames: int = 0
    apply: bool = True  # False: validate and dry-run only, keep the running prompts


@dataclass(slots=True)
class Preload:
    """For a warm worker before any stream takes it: compile `prompts`, run them once and warm up
    at `width` x `height`, and keep them resident (their models loaded) for the stream to come."""

    request_id: int
    prompts: list[dict[str, Any]]
    width: int
    height: int
    warmup_frames: int = 2


@dataclass(slots=True)
class SetActivePrompt:
    """Run frames through an already compiled prompt of the channel from the next frame on."""

    request_id: int
    channel: str
    index: int


@dataclass(slots=True)
class Ping:
    seq: int
    sent: float


@dataclass(slots=True)
class StatusRequest:
    request_id: int


@dataclass(slots=True)
class Stop:
    reason: str = "stop"


# -- worker -> server ---------------------------------------------------------------------------


@dataclass(slots=True)
class Started:
    """The first word of a new process, before it loads anything: its pid (so that the server can
    stop it even while it loads)."""

    pid: int


@dataclass(slots=True)
class Ready:
    """Sent once, when the engine and custom nodes are loaded and the frame loop runs."""

    pid: int
    device: str
    gpu: str | None
    cuda_visible_devices: str | None
    cuda_device_count: int
    torch_version: str
    cwd: str
    node_count: int
    load_errors: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StartupFailed:
    error: str


@dataclass(slots=True)
class FrameDone:
    """The output region of `slot` holds the result of `frame_id` (shape), or `error` says why not."""

    channel: str
    frame_id: int
    slot: int
    shape: tuple[int, int, int] | None
    error: str | None
    exec_ms: float  # all the worker did for this frame (tensor in, prompt, uint8 out)
    prompt_ms: float = 0.0  # the prompt's own execution within it
    # What the frame's nodes said besides images (node id -> their `ui`, media left out): a node's
    # text or numbers, for the stream's data channel. None when nothing.
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class Reply:
    """Answer to a request: `data` when ok; otherwise `kind` ("validation", "execution", "error")
    with `validation` (the engine's ValidationResult) or `payload` (ComfyUI's execution_error)."""

    request_id: int
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    message: str | None = None
    validation: Any = None
    payload: dict[str, Any] | None = None


@dataclass(slots=True)
class Progress:
    """Warmup progress of a channel (`done` of `total` frames). (A job's progress is a JobEvent.)"""

    channel: str
    done: int
    total: int


@dataclass(slots=True)
class Pong:
    seq: int
    sent: float
    frames_processed: int
    busy_ms: float
