"""OpenAPI 3.1 document built from the routes feature modules declare and their pydantic models.

Rooms put their routes on the app with `server.http.routes.add_routes`: each goes on the router and
into this registry, so `GET /openapi.json` always describes exactly what the app serves."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

_PATH_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    tags: tuple[str, ...] = ()
    request_model: type[BaseModel] | None = None
    request_required: bool = True
    # status -> a response model, a media type (free-form body), (media type, JSON schema), or None
    responses: dict[int, Any] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)  # name -> description
    alias_of: str | None = None


ResponsesFor = Callable[[Operation], dict[int, Any]]


class OpenApiRegistry:
    def __init__(self) -> None:
        self.operations: list[Operation] = []
        # Answers a middleware may give on top of an operation's own (e.g. 403 for a foreign
        # Origin): each maps an operation to the statuses it adds.
        self.common_responses: list[ResponsesFor] = []

    def add(self, operation: Operation) -> None:
        self.operations.append(operation)

    def document(self, title: str, version: str, description: str = "") -> dict[str, Any]:
        models: list[tuple[type[BaseModel], str]] = []
        responses_of = {id(op): self._responses(op) for op in self.operations}
        for op in self.operations:
            if op.request_model is not None:
                models.append((op.request_model, "validation"))
            models.extend((m, "serialization") for m in responses_of[id(op)].values() if isinstance(m, type))
        unique = list(dict.fromkeys(models))
        refs, defs = models_json_schema(unique, ref_template="#/components/schemas/{model}")
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            path = _PATH_PARAM.sub(r"{\1}", op.path)
            entry: dict[str, Any] = {
                "summary": op.summary,
                "operationId": _operation_id(op.method, path),
                "tags": list(op.tags),
                "responses": {},
            }
            if op.alias_of:
                entry["description"] = f"Alias of `{op.alias_of}`."
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PATH_PARAM.findall(op.path)
            ]
            params += [
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "description": desc,
                    "schema": {"type": "string"},
                }
                for name, desc in op.query.items()
            ]
            if params:
                entry["parameters"] = params
            if op.request_model is not None:
                entry["requestBody"] = {
                    "required": op.request_required,
                    "content": {"application/json": {"schema": refs[(op.request_model, "validation")]}},
                }
            for status, model in responses_of[id(op)].items():
                response: dict[str, Any] = {"description": _STATUS_TEXT.get(status, str(status))}
                if isinstance(model, type):
                    response["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
                elif isinstance(model, str):  # a media type with a free-form body
                    response["content"] = {model: {"schema": free_form_schema(model)}}
                elif isinstance(model, tuple):  # (media type, JSON schema): a body no model describes
                    response["content"] = {model[0]: {"schema": model[1]}}
                entry["responses"][str(status)] = response
            paths.setdefault(path, {})[op.method.lower()] = entry
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version, "description": description},
            "paths": paths,
            "components": {"schemas": defs.get("$defs", {})},
        }

    def _responses(self, op: Operation) -> dict[int, Any]:
        responses = dict(op.responses)
        if not responses:
            # An operation that documents nothing yet: a lone 403 would claim it answers nothing else.
            return responses
        for extra in self.common_responses:
            for status, model in extra(op).items():
                responses.setdefault(status, model)
        return dict(sorted(responses.items()))


_STATUS_TEXT = {
    101: "Switching protocols (a WebSocket)",
    200: "OK",
    201: "Created",
    204: "No content",
    400: "Bad input: the validation body, with ComfyUI's node_errors",
    403: "Refused: a cross-site request (Origin not allowed), or a path outside the folders",
    404: "Not found (no such stream, task, prompt or file)",
    405: "Method not allowed",
    409: "A stream with this id is already running",
    413: "The request body is too large",
    503: "At capacity (--max-streams), or no GPU has room for another worker",
}


# One Server-Sent Event as clients parse it: `data` (here always a JSON text), `event`, `id`, `retry`.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "contentMediaType": "application/json"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def free_form_schema(media_type: str) -> dict[str, Any]:
    """The schema of a body given only by its media type: any JSON value for JSON, bytes for
    images, text otherwise (an SSE stream is text)."""
    if media_type == "application/json" or media_type.endswith("+json"):
        return {}
    if media_type == "text/event-stream":
        return SSE_EVENT_SCHEMA
    if media_type.startswith(("image/", "application/octet-stream")):
        return {"type": "string", "format": "binary"}
    return {"type": "string"}


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return f"{method.lower()}_{words or 'root'}"
