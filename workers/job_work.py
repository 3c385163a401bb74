"""Job work, inside a worker: one-shot prompts, one at a time, on the loop's background thread.
The loop's thread keeps serving the pipe (heartbeats, interrupts) while a job runs, so an
interrupt reaches the job's cancel token at once and the running node stops at its next progress
check. (A node that never checks is the server's to handle: it kills the worker, see
workers/job_worker.py.) Handlers of the worker's one loop (workers/child.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from comfystream.pipeline.jobs import JobFinished, RunJob
from workers import job_messages as jm
from workers.child_state import Background, Outbox, WorkerState

logger = logging.getLogger(__name__)

# Compiled prompts kept per worker: running the same prompt again reuses the outputs of nodes
# whose inputs did not change (ComfyUI's cache: they are reported in execution_cached).
PLAN_CACHE_SIZE = 4


class JobWork:
    def __init__(
        self,
        state: WorkerState,
        outbox: Outbox,
        background: Background,
        release_unused: Callable[[], None] = lambda: None,
    ):
        self.state = state
        self._release_unused = release_unused
        self.send = outbox.send
        self.background = background
        # (prompt_id, CancelToken) of the running job; read by the loop's thread for interrupts.
        self._current: tuple[str, Any] | None = None
        self._current_lock = threading.Lock()
        self._early_interrupts: set[str] = set()  # for jobs sent but not started yet
        self._plans: OrderedDict[str, Any] = OrderedDict()
        self.jobs_done = 0
        self.busy_s = 0.0

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {RunJob: self._run_job, jm.InterruptJob: self._interrupt_job}

    def close(self) -> None:
        self._interrupt(None, "worker stopping")

    def signatures(self) -> set[Any]:
        """The shared outputs the kept job prompts use."""
        return {sig for plan in list(self._plans.values()) for sig in plan.signatures}

    def status(self) -> dict[str, Any]:
        torch, device = self.state.torch, self.state.device
        with self._current_lock:
            running = self._current[0] if self._current else None
        info: dict[str, Any] = {
            "jobs_done": self.jobs_done,
            "running": running,
            "device_name": str(device),
            "device_type": device.type,
            "device_index": device.index,
        }
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            stats = torch.cuda.memory_stats(device)
            reserved = stats.get("reserved_bytes.all.current", 0)
            active = stats.get("active_bytes.all.current", 0)
            info.update(
                device_name=f"{device} {torch.cuda.get_device_name(device)}",
                vram_total=total,
                vram_free=free,
                torch_vram_total=reserved,
                torch_vram_free=reserved - active,
            )
        return info

    # -- the loop's thread ---------------------------------------------------------------------

    def _run_job(self, job: RunJob) -> None:
        self.background.submit(
            lambda: self._timed(job), lambda finished, error: self._finished(job, finished, error)
        )

    def _interrupt_job(self, msg: jm.InterruptJob) -> None:
        self._interrupt(msg.prompt_id, "Interrupted by request")

    def _interrupt(self, prompt_id: str | None, reason: str) -> None:
        with self._current_lock:
            current = self._current
            if current is None or (prompt_id is not None and current[0] != prompt_id):
                if prompt_id is not None:
                    self._early_interrupts.add(prompt_id)
                return
        logger.info("interrupting prompt %s", current[0])
        current[1].cancel(reason)

    def _finished(self, job: RunJob, finished: JobFinished | None, error: BaseException | None) -> None:
        if finished is None:  # never lose the answer: the server waits for it
            logger.error("job %s failed outside the engine: %s", job.prompt_id, error)
            finished = JobFinished(
                job.prompt_id, "error", error=_error_payload(job, error or RuntimeError())
            )
        self.jobs_done += 1
        self.send(finished)
        shared = self.state.shared_weights
        if shared is not None:
            # On the loop's thread, after the answer: models the job moved onto the device join
            # the holder's copy (workers/shared_weights_cuda.py; nothing to do on the CPU).
            try:
                shared.after_run(self.state.outputs)
            except Exception:
                logger.exception("sharing the weights of the models on the device failed; they stay private")

    # -- the background thread -----------------------------------------------------------------

    def _timed(self, job: RunJob) -> JobFinished:
        start = time.perf_counter()
        finished = self._run(job)
        finished.exec_ms = (time.perf_counter() - start) * 1000.0
        self.busy_s += finished.exec_ms / 1000.0
        return finished

    def _plan(self, job: RunJob, ctx: Any) -> Any:
        from comfystream.engine import compile_prompt
        from comfystream.engine.context import reset_current_context, set_current_context

        key = json.dumps([job.prompt, job.outputs], sort_keys=True, default=str)
        plan = self._plans.get(key)
        if plan is None:
            # Validation sees the job's folders (LoadImage checks its file in the input folder).
            token = set_current_context(ctx)
            try:
                plan = compile_prompt(
                    job.prompt, self.state.registry, job.outputs, job.extra_data, cache=self.state.outputs
                )
            finally:
                reset_current_context(token)
            self._plans[key] = plan
            if len(self._plans) > PLAN_CACHE_SIZE:
                while len(self._plans) > PLAN_CACHE_SIZE:
                    self._plans.popitem(last=False)
                self._release_unused()
        else:
            self._plans.move_to_end(key)
        return plan

    def _run(self, job: RunJob) -> JobFinished:
        from comfystream.engine import (
            CancelToken,
            ExecutionContext,
            ExecutionError,
            InterruptProcessingException,
            PromptValidationError,
        )

        cancel = CancelToken()
        with self._current_lock:
            self._current = (job.prompt_id, cancel)
            if job.prompt_id in self._early_interrupts:
                self._early_interrupts.discard(job.prompt_id)
                cancel.cancel("Interrupted by request")

        def emit(event: str, data: dict[str, Any]) -> None:
            self.send(jm.JobEvent(job.prompt_id, event, data))

        ctx = ExecutionContext(
            prompt_id=job.prompt_id,
            on_event=emit,
            cancel=cancel,
            extra_data=dict(job.extra_data),
            input_dir=job.input_dir,
            output_dir=job.output_dir,
        )
        try:
            try:
                plan = self._plan(job, ctx)
            except PromptValidationError as exc:
                # The server validated it; this worker's nodes disagree (a custom node failed here).
                payload = _error_payload(job, exc)
                emit("execution_start", {"prompt_id": job.prompt_id, "timestamp": _now_ms()})
                emit("execution_error", payload)
                return JobFinished(job.prompt_id, "error", error=payload)
            result = plan.execute_sync(ctx)
            return JobFinished(job.prompt_id, "success", outputs=result.outputs, executed=result.executed)
        except InterruptProcessingException as exc:
            return JobFinished(job.prompt_id, "interrupted", error={"exception_message": str(exc)})
        except ExecutionError as exc:
            return JobFinished(job.prompt_id, "error", error=dict(exc.payload))
        finally:
            with self._current_lock:
                self._current = None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error_payload(job: RunJob, exc: BaseException) -> dict[str, Any]:
    """ComfyUI's execution_error payload for a failure that is not one node's."""
    return {
        "prompt_id": job.prompt_id,
        "node_id": None,
        "node_type": None,
        "executed": [],
        "exception_message": f"{exc}\n",
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "traceback": traceback.format_tb(exc.__traceback__),
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": _now_ms(),
        "worker_pid": os.getpid(),
    }
