"""ComfyUI's binary WebSocket frames. Every frame starts with its type as a big-endian u32.

- 1 PREVIEW_IMAGE: `[u32 1][u32 image type: 1 JPEG, 2 PNG][image bytes]` (clients that did not
  announce `supports_preview_metadata`).
- 3 TEXT (progress text): ComfyUI's legacy layout is `[u32 3][u32 len][node_id][text]`. Ours
  carries the prompt_id, in the layout ComfyUI adopted for parallel execution (announced with the
  feature flag `supports_progress_text_metadata`):
  `[u32 3][u32 len(prompt_id)][prompt_id utf-8][u32 len(node_id)][node_id utf-8][text utf-8]`.
  A client that announced neither flag gets the legacy layout it can parse (it learns which
  prompt from the JSON events around it).
- 4 PREVIEW_IMAGE_WITH_METADATA: `[u32 4][u32 len(json)][json metadata][image bytes]`, the
  metadata `{"node_id", "prompt_id", "display_node_id", "parent_node_id", "real_node_id",
  "image_type": "image/jpeg"|"image/png"}`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

_IMAGE_TYPE_NUMBERS = {"JPEG": 1, "PNG": 2}
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _prefixed(text: str) -> bytes:
    data = text.encode("utf-8")
    return _u32(len(data)) + data


def preview_image(image_type: str, image: bytes) -> bytes:
    return _u32(PREVIEW_IMAGE) + _u32(_IMAGE_TYPE_NUMBERS.get(image_type.upper(), 1)) + image


def preview_with_metadata(image_type: str, image: bytes, prompt_id: str, node_id: str | None) -> bytes:
    metadata = {
        "node_id": node_id,
        "prompt_id": prompt_id,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
        "image_type": _MIME.get(image_type.upper(), "image/jpeg"),
    }
    encoded = json.dumps(metadata).encode("utf-8")
    return _u32(PREVIEW_IMAGE_WITH_METADATA) + _u32(len(encoded)) + encoded + image


def progress_text(text: str, node_id: str | None, prompt_id: str | None = None) -> bytes:
    """With `prompt_id`: the layout that carries it; without: ComfyUI's legacy layout."""
    head = _u32(TEXT) + (_prefixed(prompt_id) if prompt_id is not None else b"")
    return head + _prefixed(str(node_id or "")) + str(text).encode("utf-8")


@dataclass(frozen=True)
class DecodedFrame:
    """A decoded binary frame (for clients and tests)."""

    type: int
    image_type: str | None = None
    image: bytes | None = None
    metadata: dict | None = None
    prompt_id: str | None = None
    node_id: str | None = None
    text: str | None = None


def decode(frame: bytes, text_has_prompt_id: bool = True) -> DecodedFrame:
    (kind,) = struct.unpack_from(">I", frame, 0)
    body = frame[4:]
    if kind == PREVIEW_IMAGE:
        (number,) = struct.unpack_from(">I", body, 0)
        image_type = {v: k for k, v in _IMAGE_TYPE_NUMBERS.items()}.get(number, "JPEG")
        return DecodedFrame(kind, image_type=image_type, image=body[4:])
    if kind == PREVIEW_IMAGE_WITH_METADATA:
        (size,) = struct.unpack_from(">I", body, 0)
        metadata = json.loads(body[4 : 4 + size])
        return DecodedFrame(
            kind,
            image_type=metadata.get("image_type"),
            image=body[4 + size :],
            metadata=metadata,
            prompt_id=metadata.get("prompt_id"),
            node_id=metadata.get("node_id"),
        )
    if kind == TEXT:
        prompt_id = None
        if text_has_prompt_id:
            (size,) = struct.unpack_from(">I", body, 0)
            prompt_id = body[4 : 4 + size].decode("utf-8")
            body = body[4 + size :]
        (size,) = struct.unpack_from(">I", body, 0)
        node_id = body[4 : 4 + size].decode("utf-8")
        return DecodedFrame(kind, prompt_id=prompt_id, node_id=node_id, text=body[4 + size :].decode("utf-8"))
    return DecodedFrame(kind, image=body)
