"""Tasks (the seed's taskId + SSE design): each task follows one queued prompt and turns its events
into the seed's progress / completion / error messages, kept for subscribers.

Every message gets an SSE id (1, 2, ... per task); the last `task_events_kept` are kept, so that a
client that reconnects with `Last-Event-ID` gets what it missed, and a client that joins late gets
the current state first. A finished task is forgotten `task_ttl_s` after it finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from aiohttp import web
from pydantic import BaseModel

from comfystream.pipeline import jobs as jm
from server.jobs import step_names
from server.jobs.queue import QueueItem
from server.jobs.settings import JobSettings

logger = logging.getLogger(__name__)

EVENT_TYPES = {"in-progress": "progress", "completed": "complete", "error": "error-event"}


class TaskProgress(BaseModel):
    percentage: int = 0
    currentStep: str = step_names.QUEUED_STEP  # noqa: N815 - the seed's field names
    currentValue: float = 0  # noqa: N815
    maxValue: float = 0  # noqa: N815


class TaskError(BaseModel):
    message: str
    details: str = ""


class TaskMessage(BaseModel):
    """One SSE message's data, as the seed defines it."""

    taskId: str  # noqa: N815
    status: Literal["in-progress", "completed", "error"]
    progress: TaskProgress
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    timestamp: str


class CreateTaskResponse(BaseModel):
    taskId: str  # noqa: N815
    prompt_id: str


@dataclass(frozen=True)
class SseEvent:
    id: int
    event: str  # progress | complete | error-event
    data: str  # TaskMessage as JSON

    @property
    def terminal(self) -> bool:
        return self.event != "progress"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_task_id() -> str:
    # The seed's "timestamp + random string".
    return f"{int(time.time() * 1000)}-{secrets.token_hex(6)}"


@dataclass(eq=False)
class Task:
    task_id: str
    prompt_id: str
    class_types: dict[str, str]
    events_kept: int
    status: str = "in-progress"
    progress: TaskProgress = field(default_factory=TaskProgress)
    created: float = field(default_factory=time.time)
    events: deque[SseEvent] = field(init=False)
    subscribers: set[asyncio.Queue[SseEvent | None]] = field(default_factory=set)
    _next_id: int = 1

    def __post_init__(self) -> None:
        self.events = deque(maxlen=max(self.events_kept, 1))

    @property
    def finished(self) -> bool:
        return self.status != "in-progress"

    @property
    def last_event(self) -> SseEvent:
        return self.events[-1]

    def publish(self, result: dict[str, Any] | None = None, error: TaskError | None = None) -> SseEvent:
        message = TaskMessage(
            taskId=self.task_id,
            status=self.status,  # type: ignore[arg-type]
            progress=self.progress.model_copy(),
            result=result,
            error=error,
            timestamp=_now_iso(),
        )
        event = SseEvent(self._next_id, EVENT_TYPES[self.status], message.model_dump_json(exclude_none=True))
        self._next_id += 1
        self.events.append(event)
        for queue in list(self.subscribers):
            queue.put_nowait(event)
        return event

    def replay(self, last_event_id: str | None) -> list[SseEvent]:
        """What a new subscriber gets first: after `last_event_id` when the kept events reach back
        that far, otherwise the current state (the latest message)."""
        if last_event_id is not None:
            try:
                last = int(last_event_id.strip())
            except ValueError:
                last = None
            if last is not None and self.events and self.events[0].id <= last + 1:
                return [e for e in self.events if e.id > last]
        return [self.last_event]

    def subscribe(self) -> asyncio.Queue[SseEvent | None]:
        queue: asyncio.Queue[SseEvent | None] = asyncio.Queue()
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[SseEvent | None]) -> None:
        self.subscribers.discard(queue)


def image_urls(outputs: dict[str, Any], base: str = "") -> list[dict[str, Any]]:
    """Every image of a job's outputs, with its /view URL."""
    images = []
    for node_id, ui in outputs.items():
        for image in (ui or {}).get("images", []) or []:
            if not isinstance(image, dict) or "filename" not in image:
                continue
            query = {
                "filename": image["filename"],
                "subfolder": image.get("subfolder", ""),
                "type": image.get("type", "output"),
            }
            images.append({**query, "node": node_id, "url": f"{base}/view?{urlencode(query)}"})
    return images


class TaskTracker:
    """The tasks by id, fed by the scheduler as a JobSink."""

    def __init__(self, settings: JobSettings):
        self.settings = settings
        self.tasks: dict[str, Task] = {}
        self._by_prompt: dict[str, Task] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    def create(self, prompt_id: str, prompt: dict[str, Any]) -> Task:
        class_types = {
            str(node_id): str(node.get("class_type"))
            for node_id, node in prompt.items()
            if isinstance(node, dict)
        }
        task = Task(new_task_id(), prompt_id, class_types, self.settings.task_events_kept)
        self.tasks[task.task_id] = task
        self._by_prompt[prompt_id] = task
        task.publish()
        return task

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    # -- JobSink -------------------------------------------------------------------------------

    def on_job_event(self, item: QueueItem, event: str, data: dict[str, Any]) -> None:
        task = self._by_prompt.get(item.prompt_id)
        if task is None or task.finished:
            return
        progress = task.progress
        if event == "execution_start":
            task.progress = TaskProgress(currentStep=step_names.STARTING_STEP)
        elif event == "executing" and data.get("node") is not None:
            node = str(data["node"])
            task.progress = TaskProgress(currentStep=step_names.step_name(task.class_types.get(node)))
        elif event == "progress":
            value, maximum = float(data.get("value") or 0), float(data.get("max") or 0)
            percentage = int(value / maximum * 100) if maximum > 0 else 0
            task.progress = progress.model_copy(
                update={
                    "currentValue": value,
                    "maxValue": maximum,
                    "percentage": max(0, min(percentage, 100)),
                }
            )
        else:
            return
        task.publish()

    def on_job_done(self, item: QueueItem, entry: dict[str, Any], finished: jm.JobFinished) -> None:
        task = self._by_prompt.pop(item.prompt_id, None)
        if task is None:
            return
        last = task.progress
        error = finished.error or {}
        if finished.status == "success":
            maximum = last.maxValue or 1
            task.status = "completed"
            task.progress = TaskProgress(
                percentage=100, currentStep=step_names.COMPLETE_STEP, currentValue=maximum, maxValue=maximum
            )
            images = image_urls(finished.outputs)
            result = {
                "prompt_id": item.prompt_id,
                "imageUrl": images[0]["url"] if images else None,
                "images": images,
                "outputs": json.loads(json.dumps(finished.outputs, default=str)),
                "uid": int(time.time() * 1000),
            }
            task.publish(result=result)
        else:
            task.status = "error"
            interrupted = finished.status == "interrupted"
            task.progress = TaskProgress(
                currentStep=step_names.INTERRUPTED_STEP if interrupted else step_names.FAILED_STEP
            )
            exception = str(error.get("exception_message") or "").strip()
            node_id = error.get("node_id")
            where = f"{error.get('node_type')} (node {node_id}): " if node_id is not None else ""
            task.publish(
                error=TaskError(
                    message="Generation interrupted" if interrupted else "Generation failed",
                    details=f"{where}{exception}" if exception else where.rstrip(": "),
                )
            )
        self._finished(task)

    def _finished(self, task: Task) -> None:
        self._expiry[task.task_id] = asyncio.get_running_loop().call_later(
            self.settings.task_ttl_s, self._expire, task.task_id
        )

    def on_queue_changed(self, remaining: int) -> None:
        pass

    def on_job_cancelled(self, item: QueueItem) -> None:
        task = self._by_prompt.pop(item.prompt_id, None)
        if task is None:
            return
        task.status = "error"
        task.progress = TaskProgress(currentStep=step_names.CANCELLED_STEP)
        task.publish(
            error=TaskError(message="Generation cancelled", details="deleted from the queue before it ran")
        )
        self._finished(task)

    # -- lifetime ------------------------------------------------------------------------------

    def _expire(self, task_id: str) -> None:
        self._expiry.pop(task_id, None)
        task = self.tasks.pop(task_id, None)
        if task is not None:
            logger.debug("task %s expired", task_id)
            for queue in list(task.subscribers):
                queue.put_nowait(None)

    def close(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        for task in self.tasks.values():
            for queue in list(task.subscribers):
                queue.put_nowait(None)


# Made by the jobs feature's setup_routes (other features may add their sinks at startup).
TASK_TRACKER_KEY = web.AppKey("task_tracker", TaskTracker)
