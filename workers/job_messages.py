"""Messages on the pipe between the server and a job worker (pickled by multiprocessing).

A job worker shares the stream worker's process model (spawn, GPU pin, heartbeats: `Ping`,
`Pong`, `Stop`, `StatusRequest` / `Reply` of workers/messages.py). The job itself goes in as
`comfystream.pipeline.jobs.RunJob` and its end comes back as `comfystream.pipeline.jobs.JobFinished`,
the types the caller of a job worker builds and reads; these are the pipe's other job messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# -- server -> worker ---------------------------------------------------------------------------


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
