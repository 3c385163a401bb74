"""Messages on the pipe between the server and a job worker (pickled by multiprocessing).

A job worker shares the stream worker's process model (spawn, GPU pin, heartbeats: `Ping`,
`Pong`, `Stop`, `StatusRequest` / `Reply` of workers/messages.py); these are the job-only ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# -- server -> worker ---------------------------------------------------------------------------


@dataclass(slots=True)
class RunJob:
    """Execute one prompt (already validated by the server) and report its events."""

    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None  # ComfyUI's outputs_to_execute (partial execution); None: all
    input_dir: str | None = None
    output_dir: str | None = None


@dataclass(slots=True)
class InterruptJob:
    """Fire the cancel token of `prompt_id` (None: of whatever runs); the node stops at its next
    progress check."""

    prompt_id: str | None = None


# -- worker -> server ---------------------------------------------------------------------------


@dataclass(slots=True)
class JobEvent:
    """One engine event of a running job: ComfyUI's name and payload (with `prompt_id`)."""

    prompt_id: str
    event: str
    data: dict[str, Any]


@dataclass(slots=True)
class JobFinished:
    """The job is over: `status` is "success", "error" or "interrupted". `outputs` are ComfyUI's
    history outputs (node_id -> ui dict); `error` the execution_error payload on failure."""

    prompt_id: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    executed: list[str] = field(default_factory=list)
    exec_ms: float = 0.0
