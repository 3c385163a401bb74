"""One-shot jobs on worker processes: what a job worker is asked to run and what it reports.

A job worker comes from the worker backend (`WorkerBackend.create_job_worker`, in
comfystream/pipeline/backend.py) and runs one prompt at a time. `RunJob` and `JobFinished` are plain
data: the caller (the server's job scheduler) builds the one and reads the other, and the worker
process receives and sends them as they are (pickled over its pipe; the pipe's other job messages
are the backend's own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class RunJob:
    """Execute one prompt (already validated by the caller) and report its events."""

    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None  # ComfyUI's outputs_to_execute (partial execution); None: all
    input_dir: str | None = None
    output_dir: str | None = None


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


# on_event(prompt_id, event, data): one of the running job's events, ComfyUI's name and payload.
JobEventCallback = Callable[[str, str, dict[str, Any]], None]
JobFinishedCallback = Callable[[JobFinished], None]


class JobWorkerClient(Protocol):
    """A supervised worker process that runs one job at a time (restarted with backoff when it
    crashes). Events and the end of each job come back through the callbacks it was created with
    (on the loop thread, in the order the worker sent them); `on_idle()` says it can take the next
    job (after it started, or came back from a loss: the lost job ends as an error)."""

    name: str

    @property
    def state(self) -> str:
        """ "starting", "ready", "busy", "restarting", "failed", "stopping" or "stopped"."""

    @property
    def pid(self) -> int | None: ...

    @property
    def current(self) -> str | None:
        """The prompt_id of the running job."""

    @property
    def idle(self) -> bool:
        """Ready, and running no job: `run` may be called."""

    async def start(self) -> None: ...

    def run(self, job: RunJob) -> None:
        """Start `job` (raises WorkerError when not `idle`)."""

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running job (if it is `prompt_id`; None: whichever runs). A job that
        ignores it is ended by killing and replacing the process. False: nothing was running."""

    def status(self) -> dict[str, Any]: ...

    async def request_status(self, timeout: float = 2.0) -> dict[str, Any]:
        """The process's own report (device, memory, models); {} when it cannot answer."""

    async def stop(self) -> None: ...
