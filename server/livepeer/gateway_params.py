"""Params as go-livepeer's BYOC gateway sends them, brought to the params shape of this API.

Two wrappings reach a worker (byoc/stream_gateway.go, byoc/trickle.go):
- the control channel's first message after a start (and after an orchestrator swap) is the
  stream's saved request, `{"params": {...}}` (null when the stream was started without params);
- for the `comfyui` capability, params given without a `prompt` key are wrapped as
  `{"prompt": params}` (e.g. `{"prompt": {"width": 512, "height": 512}}`).

A `prompt` object whose values are ComfyUI nodes (objects with a `class_type`) is a workflow and
stays as it is; one with no node among its values is wrapped params and is unwrapped.
"""

from __future__ import annotations

from typing import Any


def _has_nodes(value: dict[str, Any]) -> bool:
    return any(isinstance(v, dict) and "class_type" in v for v in value.values())


def unwrap_params(data: Any) -> Any:
    """`data` without the gateway's wrappings; None (no params) stays None. Anything that is not
    a wrapping is returned unchanged, for the caller's validation to judge."""
    if isinstance(data, dict) and set(data) == {"params"}:
        data = data["params"]
    if isinstance(data, dict) and set(data) == {"prompt"}:
        inner = data["prompt"]
        if isinstance(inner, dict) and not _has_nodes(inner):
            return dict(inner)
    return data
