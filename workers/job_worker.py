"""The server's side of a job worker: a spawned, GPU-pinned process running `job_loop`, one job at
a time, restarted with backoff when it dies.

The process is spawned, pinned and stopped by the stream workers' code (`ProcessPoolBackend.
spawn_process`, `WorkerProcess`); only the loop it runs and the messages it answers differ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from comfystream.pipeline.backend import WorkerSpec
from workers import job_loop
from workers import job_messages as jm
from workers import messages as m
from workers.process import WorkerError, WorkerLost, WorkerProcess

if TYPE_CHECKING:
    from workers.backend import ProcessPoolBackend

logger = logging.getLogger(__name__)

# A worker that ran this long without trouble starts its next restart from the shortest delay.
HEALTHY_AFTER_S = 30.0


class JobWorkerProcess(WorkerProcess):
    """A worker process whose long-lived task is the job loop instead of the frame loop."""

    loop_target = staticmethod(job_loop.run_job_loop)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_job_event: Callable[[jm.JobEvent], None] | None = None
        self.on_job_finished: Callable[[jm.JobFinished], None] | None = None

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, jm.JobEvent):
            self.last_heard = time.monotonic()
            if self.on_job_event is not None:
                self.on_job_event(msg)
        elif isinstance(msg, jm.JobFinished):
            self.last_heard = time.monotonic()
            if self.on_job_finished is not None:
                self.on_job_finished(msg)
        else:
            super()._dispatch(msg)


class JobWorker:
    """One supervised job worker. Loop-bound. `run` hands it a job when `idle`; events and the end
    of the job come back through `on_event(prompt_id, event, data)` and `on_finished(JobFinished)`;
    `on_idle()` says it can take the next job (after it started, or came back from a crash).

    When the process dies mid-job, the job ends as an error ("worker lost") and a new process is
    spawned after a delay growing from the backend's `backoff_min_s` to `backoff_max_s`; after
    `max_failures` failed starts in a row the worker is "failed" and takes no more jobs."""

    def __init__(
        self,
        backend: ProcessPoolBackend,
        spec: WorkerSpec,
        name: str,
        on_event: Callable[[str, str, dict[str, Any]], None],
        on_finished: Callable[[jm.JobFinished], None],
        on_idle: Callable[[], None],
    ):
        self.backend = backend
        self.spec = spec
        self.name = name
        self._on_event = on_event
        self._on_finished = on_finished
        self._on_idle = on_idle
        self.proc: JobWorkerProcess | None = None
        self.state = "new"  # new -> starting -> ready <-> busy -> (restarting) -> failed | stopped
        self.current: str | None = None  # prompt_id of the running job
        self.restarts = 0
        self.failures = 0
        self.jobs_done = 0
        self.last_error: str | None = None
        self._ready_since = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self.state == "ready" and self.current is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        """Spawn the process (raises when it cannot start; the caller may retry)."""
        if self.state != "new":
            return
        self.state = "starting"
        try:
            self._adopt(await self.backend.spawn_process(self.spec, self.name, JobWorkerProcess))
        except BaseException as exc:
            self.state = "failed"
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self._set_ready()

    def run(self, job: jm.RunJob) -> None:
        if not self.idle or self.proc is None:
            raise WorkerError(f"{self.name} is {self.state}, busy with {self.current}")
        self.current = job.prompt_id
        self.state = "busy"
        try:
            self.proc.send(job)
        except WorkerLost:
            pass  # the loss handler ends the job as an error

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Fire the running job's cancel token (if it is `prompt_id`, or any with None)."""
        if self.current is None or self.proc is None or (prompt_id is not None and prompt_id != self.current):
            return False
        try:
            self.proc.send(jm.InterruptJob(self.current))
        except WorkerLost:
            return False
        return True

    async def request_status(self, timeout: float = 2.0) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.state != "ready":
            return {}
        try:
            reply = await proc.request(lambda rid: m.StatusRequest(rid), timeout=timeout)
        except (TimeoutError, WorkerError):
            return {}
        return dict(reply.data) if reply.ok else {}

    def status(self) -> dict[str, Any]:
        base = self.proc.status() if self.proc is not None else {"pid": None, "device": None}
        base.update(
            {
                "worker": self.name,
                "state": self.state,
                "running": self.current,
                "jobs_done": self.jobs_done,
                "restarts": self.restarts,
                "last_error": self.last_error,
            }
        )
        return base

    async def stop(self) -> None:
        if self.state == "stopped":
            return
        self.state = "stopping"
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        proc, self.proc = self.proc, None
        if proc is not None:
            await proc.stop(graceful_timeout=self.backend.settings.graceful_stop_s)
        if self.current is not None:
            self._end_lost_job("the server is shutting down")
        self.state = "stopped"

    # -- internals -----------------------------------------------------------------------------

    def _adopt(self, proc: WorkerProcess) -> None:
        assert isinstance(proc, JobWorkerProcess)
        self.proc = proc
        proc.on_job_event = self._job_event
        proc.on_job_finished = self._job_finished
        proc.on_lost = self._lost

    def _set_ready(self) -> None:
        self.state = "ready"
        self._ready_since = time.monotonic()
        self._on_idle()

    def _job_event(self, msg: jm.JobEvent) -> None:
        self._on_event(msg.prompt_id, msg.event, msg.data)

    def _job_finished(self, msg: jm.JobFinished) -> None:
        if msg.prompt_id != self.current:
            logger.warning("%s: finished %s but ran %s", self.name, msg.prompt_id, self.current)
        self.current = None
        self.jobs_done += 1
        if self.state == "busy":
            self.state = "ready"
        self._on_finished(msg)
        if self.idle:
            self._on_idle()

    def _end_lost_job(self, reason: str) -> None:
        prompt_id, self.current = self.current, None
        if prompt_id is None:
            return
        payload = {
            "prompt_id": prompt_id,
            "node_id": None,
            "node_type": None,
            "executed": [],
            "exception_message": f"The job worker was lost: {reason}\n",
            "exception_type": "workers.process.WorkerLost",
            "traceback": [],
            "current_inputs": {},
            "current_outputs": [],
            "timestamp": int(time.time() * 1000),
        }
        self._on_event(prompt_id, "execution_error", payload)
        self._on_finished(jm.JobFinished(prompt_id, "error", error=payload))

    def _lost(self, proc: WorkerProcess, reason: str) -> None:
        if proc is not self.proc or self.state in ("stopping", "stopped"):
            return
        logger.warning(
            "%s lost (%s)%s", self.name, reason, f" while running {self.current}" if self.current else ""
        )
        self.proc = None
        self.last_error = reason
        self.state = "restarting"
        if time.monotonic() - self._ready_since > HEALTHY_AFTER_S:
            self.failures = 0
        self._end_lost_job(reason)
        self._task = asyncio.get_running_loop().create_task(self._restart(), name=f"{self.name}-restart")

    async def _restart(self) -> None:
        settings = self.backend.settings
        while self.state == "restarting":
            await asyncio.sleep(min(settings.backoff_min_s * (2**self.failures), settings.backoff_max_s))
            try:
                proc = await self.backend.spawn_process(self.spec, self.name, JobWorkerProcess)
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("%s: restart attempt %d failed: %s", self.name, self.failures, self.last_error)
                if self.failures >= settings.max_failures:
                    self.state = "failed"
                    logger.error("%s: giving up after %d failed starts", self.name, self.failures)
                    return
                continue
            if self.state != "restarting":  # stopped meanwhile
                await proc.stop(graceful_timeout=0.5)
                return
            self._adopt(proc)
            self.restarts += 1
            self._task = None
            logger.info("%s restarted (pid %s)", self.name, proc.pid)
            self._set_ready()
            return
