"""Queueing a prompt, as ComfyUI's POST /prompt does: validate here (against the server's node
registry, with the jobs' input folder in view), number it, and hand it to the scheduler."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from comfystream.engine import ExecutionContext, ValidationResult, parse_prompt, validate_prompt
from comfystream.engine.context import reset_current_context, set_current_context
from comfystream.prompts import PromptFormatError, is_ui_workflow, registry_input_types, ui_to_api
from server.jobs.output_cache import cache_key
from server.jobs.queue import QueueItem
from server.jobs.scheduler import JobScheduler
from server.jobs.settings import JobSettings
from server.nodes.files import refuse_outside_files
from server.nodes.validation import with_missing_node_hint


@dataclass
class PromptRequest:
    """The fields of ComfyUI's POST /prompt body."""

    prompt: Any
    prompt_id: str | None = None
    client_id: str | None = None
    number: float | None = None
    front: bool = False
    extra_data: dict[str, Any] = field(default_factory=dict)
    partial_execution_targets: list[str] | None = None


@dataclass
class Submitted:
    item: QueueItem | None  # None: the prompt was refused (see `error`)
    node_errors: dict[str, Any]
    error: dict[str, Any] | None = None

    def to_comfy(self) -> dict[str, Any]:
        if self.item is None:
            return {"error": self.error, "node_errors": self.node_errors}
        return {"prompt_id": self.item.prompt_id, "number": self.item.number, "node_errors": self.node_errors}


def comfy_error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details or message, "extra_info": {}}


@contextmanager
def job_folders(settings: JobSettings) -> Iterator[None]:
    """Node schemas and validation see the jobs' folders (LoadImage lists the input folder)."""
    token = set_current_context(
        ExecutionContext(
            prompt_id="validation", input_dir=str(settings.input_dir), output_dir=str(settings.output_dir)
        )
    )
    try:
        yield
    finally:
        reset_current_context(token)


def validate_in_folders(
    prompt: Any, registry: Any, settings: JobSettings, partial: list[str] | None, extra_data: dict[str, Any]
) -> ValidationResult:
    with job_folders(settings):
        if is_ui_workflow(prompt):  # saved from the editor: converted as its "Export (API)" does
            try:
                prompt = ui_to_api(prompt, registry_input_types(registry))
            except PromptFormatError:
                pass  # validate_prompt answers it in ComfyUI's words
        try:
            parsed = parse_prompt(prompt)
        except PromptFormatError:
            parsed = None  # validate_prompt answers it in ComfyUI's words
        refused = refuse_outside_files(parsed, registry) if parsed is not None else None
        return refused or validate_prompt(prompt, registry, partial, extra_data)


async def submit_prompt_async(
    request: PromptRequest, registry: Any, settings: JobSettings, scheduler: JobScheduler
) -> Submitted:
    """`submit_prompt` with the validation in a thread: a large prompt (thousands of nodes takes
    seconds) must not hold up the event loop that carries every stream's frames."""
    result = await asyncio.to_thread(
        validate_in_folders,
        request.prompt,
        registry,
        settings,
        request.partial_execution_targets,
        _extra_data(request),
    )
    return submit_prompt(request, registry, settings, scheduler, validated=result)


def _extra_data(request: PromptRequest) -> dict[str, Any]:
    extra_data = dict(request.extra_data or {})
    if request.client_id is not None:
        extra_data["client_id"] = request.client_id
    return extra_data


def submit_prompt(
    request: PromptRequest,
    registry: Any,
    settings: JobSettings,
    scheduler: JobScheduler,
    validated: ValidationResult | None = None,
) -> Submitted:
    prompt_id = str(request.prompt_id) if request.prompt_id is not None else str(uuid.uuid4())
    if scheduler.queue.knows(prompt_id):
        return Submitted(
            None,
            {},
            comfy_error(
                "invalid_prompt", "Invalid prompt", f"prompt_id {prompt_id} is already queued or running"
            ),
        )
    extra_data = _extra_data(request)
    result = validated or validate_in_folders(
        request.prompt, registry, settings, request.partial_execution_targets, extra_data
    )
    if not result.ok:
        comfy = result.to_comfy()
        return Submitted(None, comfy["node_errors"] or {}, with_missing_node_hint(comfy["error"]))
    if request.number is not None:
        number: float = float(request.number)
    else:
        number = scheduler.queue.next_number(bool(request.front))
    extra_data["create_time"] = int(time.time() * 1000)  # ComfyUI's: the jobs API sorts by it
    with job_folders(settings):  # LoadImage's IS_CHANGED hashes its file in the input folder
        key = cache_key(result.prompt, list(result.outputs), registry)
    item = QueueItem(number, prompt_id, result.prompt, extra_data, list(result.outputs), key)
    scheduler.submit(item)
    return Submitted(item, result.node_errors or {})
