"""Unknown fields in a stream start: a 400 that names the field, what it may have meant, and the
fields accepted, instead of a stream that runs without the input the caller thought it gave."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from server.http import errors
from server.http.errors import ValidationErrorItem
from server.streams.models import CreateStreamRequest, StartStreamRequest

# Names people (and other servers' APIs) use for our fields.
_SYNONYMS = {
    "input_url": "subscribe_url",
    "source_url": "subscribe_url",
    "input": "subscribe_url",
    "in_url": "subscribe_url",
    "output_url": "publish_url",
    "output": "publish_url",
    "out_url": "publish_url",
    "sink_url": "publish_url",
    "id": "stream_id",
    "prompts": "params",
    "prompt": "params",
    "workflow": "params",
}


def _meant(name: str, accepted: Iterable[str]) -> str | None:
    accepted = list(accepted)
    if name in _SYNONYMS and _SYNONYMS[name] in accepted:
        return _SYNONYMS[name]
    close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.75)
    return close[0] if close else None


def _reject(unknown: list[str], accepted: list[str], where: str) -> web.HTTPException:
    items = []
    for name in unknown:
        meant = _meant(name, accepted)
        hint = f" (did you mean {meant!r}?)" if meant else ""
        items.append(
            ValidationErrorItem(
                error_type="unknown_field",
                message=f"unknown field {name!r}{hint}",
                input_name=name,
                valid_options=accepted,
            )
        )
    listed = "; ".join(i.message for i in items)
    return errors.error_response(
        web.HTTPBadRequest,
        "Invalid request",
        f"{listed} in {where}. Accepted fields: {', '.join(accepted)}",
        items,
    )


def check_start_fields(data: Any) -> None:
    """`POST /stream/start`: every top-level field must be one of StartStreamRequest's."""
    if not isinstance(data, dict):
        return  # the model's own check answers that
    accepted = list(StartStreamRequest.model_fields)
    unknown = [k for k in data if k not in StartStreamRequest.model_fields]
    if unknown:
        raise _reject(unknown, accepted, "the stream start request (pipeline params go in 'params')")


def check_flat_fields(data: Any) -> None:
    """`POST /stream` (the flat form): fields beside the known ones are the pipeline's params and
    pass through, but not one that looks like a misspelled URL or id of ours."""
    if not isinstance(data, dict):
        return
    ours = [k for k in StartStreamRequest.model_fields if k.endswith("_url") or k.endswith("_id")]
    known = set(CreateStreamRequest.model_fields)
    suspicious = [
        k
        for k in data
        if k not in known
        and (k.endswith("_url") or k in _SYNONYMS and _SYNONYMS[k] != "params" or _meant(k, ours))
    ]
    if suspicious:
        raise _reject(suspicious, sorted(known), "the stream request")
