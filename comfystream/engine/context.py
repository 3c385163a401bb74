"""Per-execution state: the frame in, the frames out, the cancel token, the event callback.

There is no process-global "current prompt": nodes reach the context of the execution they run
in through a `ContextVar`, so two executions in one process (threads or tasks) never see each
other's.
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfystream.engine.errors import InterruptProcessingException

EventCallback = Callable[[str, dict[str, Any]], None]


class CancelToken:
    """A thread-safe flag; `check()` raises `InterruptProcessingException` once it is set."""

    __slots__ = ("_event", "reason")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def cancel(self, reason: str | None = None) -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise InterruptProcessingException(self.reason or "Processing interrupted")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or `timeout`; True when cancelled."""
        return self._event.wait(timeout)


@dataclass
class ExecutionContext:
    """Everything one execution of a prompt owns.

    `frame` feeds `LoadTensor`; when it is None and `frame_source` is set, `LoadTensor` calls
    `frame_source(timeout_seconds)` for one. `SaveTensor` appends to `output_frames`.
    `extra_data` is ComfyUI's `extra_data` (`extra_pnginfo`, `client_id`, ...).
    """

    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    frame: Any = None
    on_event: EventCallback | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    extra_data: dict[str, Any] = field(default_factory=dict)
    frame_source: Callable[[float | None], Any] | None = None
    output_dir: str | None = None
    input_dir: str | None = None
    output_frames: list[Any] = field(default_factory=list)
    current_node: str | None = None
    # node_id -> {"value", "max", "state"}: the source of ComfyUI's `progress_state` messages.
    node_progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Ask for ExecutionResult.output_images (the CLI writes them out).
    capture_outputs: bool = False
    # Nodes may keep per-execution values here (e.g. extra named inputs of a custom frame node).
    values: dict[str, Any] = field(default_factory=dict)

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Send one event; `prompt_id` is added when the payload lacks it."""
        if self.on_event is not None:
            if "prompt_id" not in data:
                data["prompt_id"] = self.prompt_id
            self.on_event(event_type, data)


_current: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar(
    "comfystream_execution_context", default=None
)


def current_context() -> ExecutionContext | None:
    """The context of the execution running in this thread / task, or None outside one."""
    return _current.get()


def require_context() -> ExecutionContext:
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("this node can only run inside a comfystream engine execution")
    return ctx


def set_current_context(ctx: ExecutionContext | None) -> contextvars.Token:
    return _current.set(ctx)


def reset_current_context(token: contextvars.Token) -> None:
    _current.reset(token)
