"""The server's side of a job worker: a supervised worker (workers/supervisor.py) that runs
one-shot prompts, one at a time (workers/job_work.py in the process). It is the backend's
`comfystream.pipeline.jobs.JobWorkerClient` (`ProcessPoolBackend.create_job_worker`).

When the process dies mid-job, the job ends as an error ("worker lost") and the supervisor brings
a new process up (a warm one when the pool has it) under its restart policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from comfystream.pipeline.backend import WorkerError, WorkerLost, WorkerSpec
from comfystream.pipeline.jobs import JobFinished, RunJob
from workers import job_messages as jm
from workers import messages as m
from workers.settings import ProcessSource
from workers.supervisor import Supervisor

logger = logging.getLogger(__name__)


class JobWorker(Supervisor):
    """`run` hands it a job when `idle`; events and the end of the job come back through
    `on_event(prompt_id, event, data)` and `on_finished(JobFinished)`; `on_idle()` says it can
    take the next job (after it started, or came back from a loss)."""

    # Job workers are spawned for themselves at start: the warm pool is for streams and restarts.
    start_warm = False

    def __init__(
        self,
        backend: ProcessSource,
        spec: WorkerSpec,
        name: str,
        on_event: Callable[[str, str, dict[str, Any]], None],
        on_finished: Callable[[JobFinished], None],
        on_idle: Callable[[], None],
    ):
        super().__init__(backend, spec, name)
        self._on_event = on_event
        self._on_finished = on_finished
        self._on_idle = on_idle
        self.current: str | None = None  # prompt_id of the running job
        self._job: RunJob | None = None
        self._started_nodes: list[str] = []  # of the running job, from its `executing` events
        self.jobs_done = 0

    @property
    def state(self) -> str:
        return "busy" if self._state == "ready" and self.current is not None else self._state

    @property
    def idle(self) -> bool:
        return self._state == "ready" and self.current is None and self.proc is not None

    def run(self, job: RunJob) -> None:
        if not self.idle or self.proc is None:
            raise WorkerError(f"{self.name} is {self.state}, busy with {self.current}")
        self.current, self._job, self._started_nodes = job.prompt_id, job, []
        try:
            self.proc.send(job)
        except WorkerLost:
            pass  # the loss ends the job as an error

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Fire the running job's cancel token (if it is `prompt_id`, or any with None). A job still
        running `interrupt_grace_s` later (a node that never checks the token) has its process
        killed and replaced, and ends interrupted all the same."""
        if self.current is None or self.proc is None or (prompt_id is not None and prompt_id != self.current):
            return False
        try:
            self.proc.send(jm.InterruptJob(self.current))
        except WorkerLost:
            return False
        self._watch(("interrupt", self.current), self.backend.settings.interrupt_grace_s)
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
        base = super().status()
        base.update({"state": self.state, "running": self.current, "jobs_done": self.jobs_done})
        return base

    async def stop(self) -> None:
        await super().stop()
        self._end_lost_job("the server is shutting down")

    # -- Supervisor hooks ------------------------------------------------------------------------

    def _on_ready(self) -> None:
        self._on_idle()

    def _process_lost(self, reason: str) -> None:
        if self.current is not None:
            logger.warning("%s lost (%s) while running %s", self.name, reason, self.current)
        self._end_lost_job(reason)

    def _overdue(self, key: Any) -> None:
        _, prompt_id = key
        if prompt_id != self.current:
            return
        grace = self.backend.settings.interrupt_grace_s
        logger.warning(
            "%s: prompt %s ignored its interrupt for %.1f s: killing the worker", self.name, prompt_id, grace
        )
        self._end_interrupted_job()
        self._replace(f"prompt {prompt_id} did not stop within {grace:.1f} s of its interrupt")

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, jm.JobEvent):
            if (
                msg.event == "executing"
                and msg.data.get("node") is not None
                and msg.prompt_id == self.current
            ):
                self._started_nodes.append(str(msg.data["node"]))
            self._on_event(msg.prompt_id, msg.event, msg.data)
        elif isinstance(msg, JobFinished):
            self._job_finished(msg)
        else:
            super()._on_message(msg)

    # -- internals -----------------------------------------------------------------------------

    def _job_finished(self, msg: JobFinished) -> None:
        self._deadlines.clear(("interrupt", msg.prompt_id))
        if msg.prompt_id != self.current:
            logger.warning("%s: finished %s but ran %s", self.name, msg.prompt_id, self.current)
        self.current = None
        self.jobs_done += 1
        self._on_finished(msg)
        if self.idle:
            self._on_idle()

    def _end_interrupted_job(self) -> None:
        """End the running job as a cooperative interrupt ends it: `execution_interrupted` at the
        node it was running, then the job finished as "interrupted"."""
        prompt_id, job, nodes = self.current, self._job, self._started_nodes
        self.current = None
        if prompt_id is None:
            return
        node = nodes[-1] if nodes else None
        node_type = (job.prompt.get(node) or {}).get("class_type") if job is not None and node else None
        self._on_event(
            prompt_id,
            "execution_interrupted",
            {
                "prompt_id": prompt_id,
                "node_id": node,
                "node_type": node_type,
                "executed": nodes[:-1],
                "timestamp": int(time.time() * 1000),
            },
        )
        self.jobs_done += 1
        self._on_finished(
            JobFinished(prompt_id, "interrupted", error={"exception_message": "Interrupted by request"})
        )

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
            "exception_type": f"{WorkerLost.__module__}.{WorkerLost.__qualname__}",
            "traceback": [],
            "current_inputs": {},
            "current_outputs": [],
            "timestamp": int(time.time() * 1000),
        }
        self._on_event(prompt_id, "execution_error", payload)
        self._on_finished(JobFinished(prompt_id, "error", error=payload))
