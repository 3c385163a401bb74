"""Exceptions the engine raises, each carrying ComfyUI's payload where ComfyUI has one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfystream.engine.validation import ValidationResult


class InterruptProcessingException(Exception):  # noqa: N818 - ComfyUI's name, kept for node compatibility
    """Raised inside an execution when its cancel token fires (ComfyUI's name for it)."""


class PromptValidationError(ValueError):
    """A prompt failed validation; `result` holds ComfyUI's error and node_errors."""

    def __init__(self, result: ValidationResult):
        self.result = result
        error = result.error or {}
        lines = [f"{error.get('message', 'Prompt failed validation')}"]
        if error.get("details"):
            lines.append(str(error["details"]))
        super().__init__(": ".join(lines))


class ExecutionError(RuntimeError):
    """A node raised while the prompt ran; `payload` is ComfyUI's `execution_error` message."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        super().__init__(
            f"node {payload.get('node_id')} ({payload.get('node_type')}) failed: "
            f"{payload.get('exception_type')}: {str(payload.get('exception_message', '')).strip()}"
        )
