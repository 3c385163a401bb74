"""Error bodies: the seed's validation body (`error`, `message`, `validation_errors`) with ComfyUI's
`node_errors` beside it, raised as aiohttp HTTP exceptions carrying JSON."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from comfystream.engine import ValidationResult
from comfystream.json_limits import describe_error as describe_json_error
from comfystream.prompts import PromptFormatError
from server.nodes.validation import with_missing_node_hint


class ValidationErrorItem(BaseModel):
    node_id: str | None = None
    node_type: str | None = None
    error_type: str
    message: str
    input_name: str | None = None
    received_value: Any = None
    valid_options: list[Any] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every 4xx/5xx of this API: the seed's validation body with ComfyUI's `node_errors` beside it."""

    error: str
    message: str
    validation_errors: list[ValidationErrorItem] = Field(default_factory=list)
    node_errors: dict[str, Any] = Field(default_factory=dict)
    comfy_error: dict[str, Any] | None = Field(None, description="ComfyUI's prompt-level error, when one")


def error_response(
    status: type[web.HTTPException],
    error: str,
    message: str,
    validation_errors: list[ValidationErrorItem] | None = None,
    node_errors: dict[str, Any] | None = None,
    comfy_error: dict[str, Any] | None = None,
) -> web.HTTPException:
    """An HTTP exception whose body is an `ErrorResponse`; raise it from a handler."""
    body = ErrorResponse(
        error=error,
        message=message,
        validation_errors=validation_errors or [],
        node_errors=node_errors or {},
        comfy_error=comfy_error,
    )
    return status(text=body.model_dump_json(), content_type="application/json")


def invalid_json(exc: Exception) -> web.HTTPException:
    said = describe_json_error(exc) if isinstance(exc, ValueError) else str(exc)
    return error_response(
        web.HTTPBadRequest,
        "Invalid JSON",
        f"The request body is {said}" if said.startswith("not valid JSON") else f"The request body: {said}",
        [ValidationErrorItem(error_type="invalid_json", message=said)],
    )


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def request_validation_failed(exc: ValidationError) -> web.HTTPException:
    """Wrong types, missing URLs, bad sizes: one item per field error, `input_name` its dotted path."""
    items = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err.get("loc", ()))
        options = []
        ctx = err.get("ctx") or {}
        if "expected" in ctx:
            options = [str(ctx["expected"])]
        items.append(
            ValidationErrorItem(
                error_type=err.get("type", "invalid"),
                message=f"{path}: {err.get('msg', 'invalid')}" if path else err.get("msg", "invalid"),
                input_name=path or None,
                received_value=_jsonable(err.get("input")),
                valid_options=options,
            )
        )
    fields = ", ".join(sorted({i.input_name for i in items if i.input_name}))
    return error_response(
        web.HTTPBadRequest,
        "Invalid request",
        f"The request body failed validation ({fields})" if fields else "The request body failed validation",
        items,
    )


def prompt_format_failed(exc: PromptFormatError) -> web.HTTPException:
    return error_response(
        web.HTTPBadRequest,
        "Prompt validation failed",
        str(exc),
        [ValidationErrorItem(error_type="invalid_prompt_format", message=str(exc), input_name="prompt")],
    )


def prompt_validation_failed(
    result: ValidationResult, prompt_index: int = 0, prompt_count: int = 1
) -> web.HTTPException:
    """An invalid prompt: the seed's body, ComfyUI's `node_errors`, and its prompt-level error."""
    which = f" (prompt {prompt_index + 1} of {prompt_count})" if prompt_count > 1 else ""
    comfy = result.to_comfy()
    comfy["error"] = with_missing_node_hint(comfy.get("error"))
    summary = ((comfy.get("error") or {}).get("message") or "The prompt failed validation").rstrip(".")
    items = []
    for item in result.validation_errors():
        details = item.pop("details", None)
        if details:
            item["message"] = f"{item.get('message') or ''}: {details}".strip(": ")
        item["received_value"] = _jsonable(item.get("received_value"))
        item["valid_options"] = [_jsonable(o) for o in item.get("valid_options") or []]
        item["node_id"] = None if item.get("node_id") is None else str(item["node_id"])
        item["error_type"] = item.get("error_type") or "invalid_prompt"
        item["message"] = item.get("message") or item["error_type"]
        items.append(ValidationErrorItem.model_validate(item))
    return error_response(
        web.HTTPBadRequest,
        "Prompt validation failed",
        f"{summary}{which}. The prompt references nodes, inputs or values that are not available "
        "in this workspace",
        items,
        comfy.get("node_errors") or {},
        comfy.get("error"),
    )


def not_found(stream_id: str) -> web.HTTPException:
    return error_response(web.HTTPNotFound, "Stream not found", f"No stream with id {stream_id!r}")


def conflict(stream_id: str) -> web.HTTPException:
    return error_response(
        web.HTTPConflict, "Stream already exists", f"A stream with id {stream_id!r} is already running"
    )


def at_capacity(max_streams: int) -> web.HTTPException:
    return error_response(
        web.HTTPServiceUnavailable,
        "At capacity",
        f"This server already runs its maximum of {max_streams} streams; stop one or try another server",
    )
