"""Progress reporting for nodes, shaped like `comfy.utils.ProgressBar`.

A node creates `ProgressBar(total)` and calls `update(n)` / `update_absolute(value)`; each call
checks the execution's cancel token (so a long node stops at its next step) and sends ComfyUI's
`progress` and `progress_state` messages for the node that is running.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from comfystream.engine.context import ExecutionContext, current_context

logger = logging.getLogger(__name__)


def _emit(ctx: ExecutionContext, event_type: str, data: dict[str, Any]) -> None:
    try:
        ctx.on_event(event_type, data)
    except Exception:  # the caller's callback must not fail the node that reports
        logger.exception("event callback failed on %s", event_type)


def send_progress_state(ctx: ExecutionContext) -> None:
    """ComfyUI's `progress_state`: every node that has started, with its value/max/state."""
    if ctx.on_event is None:
        return
    nodes = {
        node_id: {
            "value": st["value"],
            "max": st["max"],
            "state": st["state"],
            "node_id": node_id,
            "prompt_id": ctx.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        for node_id, st in ctx.node_progress.items()
    }
    _emit(ctx, "progress_state", {"prompt_id": ctx.prompt_id, "nodes": nodes})


def _encode_preview(preview: Any) -> tuple[str, bytes] | None:
    """A ComfyUI preview tuple ("JPEG"|"PNG", PIL image, max_size) -> (type, encoded bytes)."""
    if preview is None:
        return None
    image_type, image, max_size = (list(preview) + [None, None, None])[:3]
    image_type = str(image_type or "JPEG").upper()
    if isinstance(image, bytes | bytearray):
        return image_type, bytes(image)
    try:
        from PIL import Image

        if max_size is not None:
            image = image.copy()
            image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="PNG" if image_type == "PNG" else "JPEG", quality=95, compress_level=1)
        return image_type, buf.getvalue()
    except Exception:  # a bad preview must never fail the node that sent it
        logger.warning("could not encode a progress preview", exc_info=True)
        return None


def report_progress(
    value: float, total: float, preview: Any = None, prompt_id: str | None = None, node_id: str | None = None
) -> None:
    """What `ProgressBar` calls: check cancel, then send `progress` (and a preview when given).

    The signature is ComfyUI's progress-bar hook (`comfy.utils.set_progress_bar_global_hook`),
    so an adapter can install it as is; the running context decides the prompt id.
    """
    ctx = current_context()
    if ctx is None:
        return
    ctx.cancel.check()
    node = node_id if node_id is not None else ctx.current_node
    if ctx.on_event is None or node is None:
        return
    state = ctx.node_progress.setdefault(node, {"value": 0.0, "max": 1.0, "state": "running"})
    state.update(value=value, max=total, state="running")
    _emit(ctx, "progress", {"value": value, "max": total, "prompt_id": ctx.prompt_id, "node": node})
    send_progress_state(ctx)
    encoded = _encode_preview(preview)
    if encoded is not None:
        _emit(
            ctx,
            "preview",
            {"prompt_id": ctx.prompt_id, "node": node, "image_type": encoded[0], "image": encoded[1]},
        )


def report_progress_text(text: str, node_id: str | None = None) -> None:
    """ComfyUI's `PromptServer.send_progress_text`: free text shown on the node (with prompt_id)."""
    ctx = current_context()
    if ctx is None:
        return
    ctx.cancel.check()
    node = node_id if node_id is not None else ctx.current_node
    if ctx.on_event is not None:
        _emit(ctx, "progress_text", {"node": node, "text": str(text), "prompt_id": ctx.prompt_id})


class ProgressBar:
    """`comfy.utils.ProgressBar`: `update(n)` and `update_absolute(value, total=None, preview=None)`."""

    def __init__(self, total: float, node_id: str | None = None):
        ctx = current_context()
        self.total = total
        self.current = 0
        # Bound at creation, as ComfyUI's executing context is, so a bar updated later still
        # reports against the node that made it.
        self.node_id = node_id if node_id is not None else (ctx.current_node if ctx else None)

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        report_progress(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value)
