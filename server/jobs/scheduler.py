"""The job scheduler: ComfyUI's prompt queue served by a pool of job workers, one prompt per worker
at a time, so that as many prompts run at once as there are workers.

Events from the workers are handed to the sinks (the WebSocket hub, the task tracker) on the loop
thread, in the order the worker sent them. ComfyUI's closing `executing` with `node: null` is held
back until the job is in the history (a client that fetches /history on it finds its outputs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import web

from comfystream.pipeline import jobs as jm
from comfystream.pipeline.backend import WorkerBackend, WorkerSpec
from server.jobs.output_cache import OutputCache
from server.jobs.queue import PromptQueue, QueueItem
from server.jobs.settings import JobSettings

logger = logging.getLogger(__name__)

# The events ComfyUI keeps in a history entry's status.messages.
STATUS_EVENTS = frozenset(
    {"execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted"}
)


class JobSink(Protocol):
    """Who hears about jobs. All calls on the loop thread; a sink must not raise."""

    def on_job_event(self, item: QueueItem, event: str, data: dict[str, Any]) -> None: ...

    def on_job_done(self, item: QueueItem, entry: dict[str, Any], finished: jm.JobFinished) -> None: ...

    def on_queue_changed(self, remaining: int) -> None: ...

    # Optional: `on_job_cancelled(item)` for a pending item deleted before it ran.


class JobScheduler:
    def __init__(self, settings: JobSettings):
        self.settings = settings
        self.queue = PromptQueue(settings.history_max)
        self.sinks: list[JobSink] = []
        self.output_cache = OutputCache()
        self.workers: list[jm.JobWorkerClient] = []
        self._worker_of: dict[str, jm.JobWorkerClient] = {}
        self._messages: dict[str, list[list[Any]]] = {}
        self._current_node: dict[str, str] = {}
        self._start_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(
        self,
        backend: WorkerBackend,
        spec: WorkerSpec | None = None,
        settings: JobSettings | None = None,
        spawn_now: bool = True,
    ) -> None:
        """Make the workers (from `backend`, the app's worker backend) and, with
        `spawn_now`, spawn them in the background (the server answers, and queues, meanwhile);
        otherwise they are spawned by the first prompt queued, or by `wait_ready`."""
        if self.workers:
            return
        if settings is not None:
            self.settings = settings
            self.queue.history_max = settings.history_max
        self.workers = [
            backend.create_job_worker(
                spec or WorkerSpec(),
                f"job-worker-{i + 1}",
                on_event=self._on_event,
                on_finished=self._on_finished,
                on_idle=self._dispatch,
            )
            for i in range(self.settings.job_workers)
        ]
        if spawn_now:
            self._spawn()

    def _spawn(self) -> None:
        if self._start_task is None and self.workers and not self._closed:
            self._start_task = asyncio.get_running_loop().create_task(self._start(), name="job-workers-start")

    async def _start(self) -> None:
        results = await asyncio.gather(*(w.start() for w in self.workers), return_exceptions=True)
        for worker, result in zip(self.workers, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("%s did not start: %s", worker.name, result)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Until every worker has started (or failed to); spawns them if that has not begun."""
        self._spawn()
        if self._start_task is not None:
            await asyncio.wait_for(asyncio.shield(self._start_task), timeout)

    async def stop(self) -> None:
        self._closed = True
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.gather(self._start_task, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    # -- commands ------------------------------------------------------------------------------

    def submit(self, item: QueueItem) -> None:
        cached = self.output_cache.get(item.cache_key, self.settings) if item.cache_key else None
        if cached is not None:
            # Answered from the cache without a worker; after the POST /prompt reply, as a worker's
            # events would come.
            self.queue.start(item)
            self._messages[item.prompt_id] = []
            self._queue_changed()
            asyncio.get_running_loop().call_soon(self._finish_cached, item, cached)
            return
        self._spawn()
        self.queue.put(item)
        self._queue_changed()
        self._dispatch()

    def _finish_cached(self, item: QueueItem, outputs: dict[str, Any]) -> None:
        """ComfyUI's events for a prompt whose every node is cached: execution_start,
        execution_cached (all nodes), `executed` with each output node's cached ui, success."""
        pid = item.prompt_id
        logger.info("prompt %s: same as a finished one, its outputs reused", pid)
        self._on_event(pid, "execution_start", {"prompt_id": pid, "timestamp": _now_ms()})
        self._on_event(
            pid, "execution_cached", {"nodes": list(item.prompt), "prompt_id": pid, "timestamp": _now_ms()}
        )
        for node, ui in outputs.items():
            self._on_event(
                pid, "executed", {"node": node, "display_node": node, "output": ui, "prompt_id": pid}
            )
        self._on_event(pid, "execution_success", {"prompt_id": pid, "timestamp": _now_ms()})
        self._on_finished(jm.JobFinished(pid, "success", outputs=outputs))

    def delete_pending(self, prompt_ids: Iterable[str]) -> list[str]:
        removed = [item for item in (self.queue.delete(str(pid)) for pid in prompt_ids) if item is not None]
        self._cancelled(removed)
        return [item.prompt_id for item in removed]

    def clear_pending(self) -> list[str]:
        removed = self.queue.wipe()
        self._cancelled(removed, always=True)
        return [item.prompt_id for item in removed]

    def _cancelled(self, items: list[QueueItem], always: bool = False) -> None:
        for item in items:
            logger.info("prompt %s deleted from the queue", item.prompt_id)
            for sink in self.sinks:
                cancelled = getattr(sink, "on_job_cancelled", None)
                if cancelled is not None:
                    cancelled(item)
        if items or always:
            self._queue_changed()

    def interrupt(self, prompt_id: str | None = None) -> list[str]:
        """Interrupt the running prompt `prompt_id`, or every running one; returns those signalled."""
        signalled = []
        for worker in self.workers:
            current = worker.current
            if (
                current is not None
                and (prompt_id is None or current == prompt_id)
                and worker.interrupt(current)
            ):
                signalled.append(current)
        if prompt_id is not None and not signalled:
            logger.info("prompt %s is not running: nothing to interrupt", prompt_id)
        return signalled

    def running_node(self, prompt_id: str) -> str | None:
        return self._current_node.get(prompt_id)

    def worker_status(self) -> list[dict[str, Any]]:
        return [w.status() for w in self.workers]

    # -- workers -> sinks ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._closed:
            return
        changed = False
        for worker in self.workers:
            if not worker.idle:
                continue
            item = self.queue.pop()
            if item is None:
                break
            self._worker_of[item.prompt_id] = worker
            self._messages[item.prompt_id] = []
            logger.debug("prompt %s -> %s", item.prompt_id, worker.name)
            worker.run(
                jm.RunJob(
                    prompt_id=item.prompt_id,
                    prompt=item.prompt,
                    extra_data=item.extra_data,
                    outputs=item.outputs or None,
                    input_dir=str(self.settings.input_dir),
                    output_dir=str(self.settings.output_dir),
                )
            )
            changed = True
        if changed:
            self._queue_changed()

    def _on_event(self, prompt_id: str, event: str, data: dict[str, Any]) -> None:
        item = self.queue.running.get(prompt_id)
        if item is None:
            logger.debug("event %s for prompt %s, which is not running", event, prompt_id)
            return
        if event == "executing":
            node = data.get("node")
            if node is None:
                return  # sent after the job is in the history (_on_finished)
            self._current_node[prompt_id] = node
        if event in STATUS_EVENTS:
            self._messages.setdefault(prompt_id, []).append([event, data])
        for sink in self.sinks:
            sink.on_job_event(item, event, data)

    def _on_finished(self, msg: jm.JobFinished) -> None:
        item = self.queue.running.get(msg.prompt_id)
        if item is None:
            logger.warning("prompt %s finished but is not running", msg.prompt_id)
            return
        self._worker_of.pop(msg.prompt_id, None)
        self._current_node.pop(msg.prompt_id, None)
        messages = self._messages.pop(msg.prompt_id, [])
        outputs = msg.outputs or {}
        success = msg.status == "success"
        if success and item.cache_key:
            self.output_cache.put(item.cache_key, outputs)
        entry = self.queue.finish(
            msg.prompt_id,
            {
                "outputs": outputs,
                "status": {
                    "status_str": "success" if success else "error",
                    "completed": success,
                    "messages": messages,
                },
                "meta": {
                    node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                    for node in outputs
                },
            },
        )
        assert entry is not None
        logger.info("prompt %s: %s in %.0f ms", msg.prompt_id, msg.status, msg.exec_ms)
        for sink in self.sinks:
            sink.on_job_done(item, entry, msg)
        self._queue_changed()
        for sink in self.sinks:
            sink.on_job_event(item, "executing", {"node": None, "prompt_id": msg.prompt_id})

    def _queue_changed(self) -> None:
        remaining = self.queue.remaining
        for sink in self.sinks:
            sink.on_queue_changed(remaining)


def _now_ms() -> int:
    return int(time.time() * 1000)


# Made by the jobs feature's setup_routes (other features may add their sinks at startup).
JOB_SCHEDULER_KEY = web.AppKey("job_scheduler", JobScheduler)
