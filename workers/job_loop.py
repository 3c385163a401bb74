"""The job worker's side: a frame-less loop that runs one-shot prompts, one at a time.

The process is set up by `workers.child.initialize` like a stream worker (GPU pinned, engine and
custom nodes loaded, dies with its parent); `run_job_loop` is then its long-lived task. The main
thread serves the pipe (heartbeats, interrupts) while a job runs on an execution thread, so an
interrupt reaches the job's cancel token at once and the running node stops at its next progress
check. Like child.py, this module imports neither torch nor the engine at import time.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from collections import OrderedDict
from multiprocessing.connection import wait
from typing import Any, NoReturn

from workers import child
from workers import job_messages as jm
from workers import messages as m

logger = logging.getLogger(__name__)

# Compiled prompts kept per worker: running the same prompt again reuses the outputs of nodes
# whose inputs did not change (ComfyUI's cache: they are reported in execution_cached).
PLAN_CACHE_SIZE = 4

# At stop, a running job gets this long to honour its cancel token (and report "interrupted");
# well inside the server's graceful stop, so a node that ignores the token cannot push the exit
# into SIGTERM.
STOP_JOB_GRACE_S = 0.5


def run_job_loop() -> NoReturn:
    """The task submitted once to a job worker's executor (after `child.initialize`); ends the
    process."""
    state = child._STATE  # set by the initializer that ran in this process
    if state is None:
        raise RuntimeError("run_job_loop without initialize")
    summary = _JobLoop(state).run()
    # Leave at once, as the frame loop does: returning to the executor would make the exit wait
    # for the server's exit sentinel and then for interpreter finalisation, which joins every
    # non-daemon thread a node library started and the job thread if it ignored its cancel token
    # (seconds, or for ever). Every answer has been sent; outputs are written by finished jobs.
    logging.shutdown()
    os._exit(0 if summary["reason"] == "stop" else child.ABANDONED_EXIT_CODE)


class _JobLoop:
    def __init__(self, state: Any):
        self.state = state
        self.conn = state.conn
        self._send_lock = threading.Lock()  # the execution thread reports events too
        self._jobs: queue.SimpleQueue[jm.RunJob | None] = queue.SimpleQueue()
        self._current: tuple[str, Any] | None = None  # (prompt_id, CancelToken) of the running job
        self._current_lock = threading.Lock()
        # Interrupts for a job sent but not started yet (it is interrupted as it starts).
        self._early_interrupts: set[str] = set()
        self._plans: OrderedDict[str, Any] = OrderedDict()
        self.jobs_done = 0
        self.busy_s = 0.0
        self.stopping = False
        self._thread = threading.Thread(target=self._execute_jobs, name="job-execution", daemon=True)

    # -- the pipe ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.state.config
        self._thread.start()
        self._send(self.state.ready)
        last_heard = time.monotonic()
        reason = "stop"
        try:
            while not self.stopping:
                if self.conn in wait([self.conn], timeout=0.5):
                    last_heard = time.monotonic()
                    try:
                        while not self.stopping and self.conn.poll():
                            self._handle(self.conn.recv())
                    except (EOFError, OSError):
                        reason = "pipe closed"
                        break
                elif time.monotonic() - last_heard > config.parent_timeout_s:
                    reason = f"no word from the server for {config.parent_timeout_s:.0f} s"
                    logger.error("%s: exiting", reason)
                    break
        finally:
            self.stopping = True
            self._interrupt(None, "worker stopping")
            self._jobs.put(None)
            self._thread.join(STOP_JOB_GRACE_S)  # a node that ignores the token must not hold the exit
        logger.debug("job loop ends: %s", reason)
        return {"reason": reason, "jobs_done": self.jobs_done}

    def _send(self, msg: Any) -> None:
        with self._send_lock:
            try:
                self.conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                self.stopping = True

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, jm.RunJob):
            self._jobs.put(msg)
        elif isinstance(msg, jm.InterruptJob):
            self._interrupt(msg.prompt_id, "Interrupted by request")
        elif isinstance(msg, m.Ping):
            self._send(m.Pong(msg.seq, msg.sent, self.jobs_done, self.busy_s * 1000.0))
        elif isinstance(msg, m.StatusRequest):
            self._send(m.Reply(msg.request_id, True, self._status()))
        elif isinstance(msg, m.Stop):
            self.stopping = True
        else:
            logger.warning("job worker: unknown message %r", type(msg).__name__)

    def _interrupt(self, prompt_id: str | None, reason: str) -> None:
        with self._current_lock:
            current = self._current
            if current is None or (prompt_id is not None and current[0] != prompt_id):
                if prompt_id is not None:
                    self._early_interrupts.add(prompt_id)
                return
        logger.info("interrupting prompt %s", current[0])
        current[1].cancel(reason)

    def _status(self) -> dict[str, Any]:
        ready = self.state.ready
        torch = self.state.torch
        device = self.state.device
        with self._current_lock:
            running = self._current[0] if self._current else None
        info: dict[str, Any] = {
            "pid": ready.pid,
            "device": ready.device,
            "gpu": ready.gpu,
            "torch_version": ready.torch_version,
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

    # -- execution ---------------------------------------------------------------------------

    def _execute_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self.stopping:
                return
            start = time.perf_counter()
            try:
                finished = self._run(job)
            except BaseException as exc:  # never lose the answer: the server waits for it
                logger.error("job %s failed outside the engine: %s", job.prompt_id, exc)
                finished = jm.JobFinished(job.prompt_id, "error", error=_error_payload(job, exc))
            elapsed = time.perf_counter() - start
            finished.exec_ms = elapsed * 1000.0
            self.busy_s += elapsed
            self.jobs_done += 1
            self._send(finished)

    def _plan(self, job: jm.RunJob, ctx: Any) -> Any:
        import json

        from comfystream.engine import compile_prompt
        from comfystream.engine.context import reset_current_context, set_current_context

        key = json.dumps([job.prompt, job.outputs], sort_keys=True, default=str)
        plan = self._plans.get(key)
        if plan is None:
            # Validation sees the job's folders (LoadImage checks its file in the input folder).
            token = set_current_context(ctx)
            try:
                plan = compile_prompt(job.prompt, self.state.registry, job.outputs, job.extra_data)
            finally:
                reset_current_context(token)
            self._plans[key] = plan
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def _run(self, job: jm.RunJob) -> jm.JobFinished:
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
            self._send(jm.JobEvent(job.prompt_id, event, data))

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
                return jm.JobFinished(job.prompt_id, "error", error=payload)
            result = plan.execute_sync(ctx)
            return jm.JobFinished(job.prompt_id, "success", outputs=result.outputs, executed=result.executed)
        except InterruptProcessingException as exc:
            return jm.JobFinished(job.prompt_id, "interrupted", error={"exception_message": str(exc)})
        except ExecutionError as exc:
            return jm.JobFinished(job.prompt_id, "error", error=dict(exc.payload))
        finally:
            with self._current_lock:
                self._current = None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error_payload(job: jm.RunJob, exc: BaseException) -> dict[str, Any]:
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
