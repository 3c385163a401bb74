"""Frame I/O for streaming prompts: LoadTensor takes the execution's input frame, SaveTensor
hands frames back. Both reach the running execution through `current_context()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comfystream.engine.context import require_context

if TYPE_CHECKING:
    import torch


class InputTimeoutError(TimeoutError):
    """No input frame arrived within LoadTensor's `timeout_seconds`."""


class LoadTensor:
    """The stream's current frame, `[1,H,W,3]` float32 in 0..1."""

    CATEGORY = "ComfyStream/Loaders"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    DESCRIPTION = "The input frame of the stream (or of this execution)."
    FRAME_INPUT = True

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's protocol
        return {
            "optional": {
                "timeout_seconds": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.1,
                        "max": 30.0,
                        "step": 0.1,
                        "tooltip": "How long to wait for a frame",
                    },
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):  # noqa: N802
        return float("nan")  # a new frame every time

    def execute(self, timeout_seconds: float = 1.0):
        ctx = require_context()
        frame = ctx.frame
        if frame is None and ctx.frame_source is not None:
            frame = ctx.frame_source(timeout_seconds)
        if frame is None:
            raise InputTimeoutError(f"LoadTensor: no input frame within {timeout_seconds} s")
        return (frame,)


class SaveTensor:
    """Hands `images` back to the caller as this execution's output frame(s)."""

    CATEGORY = "ComfyStream/Savers"
    RETURN_TYPES = ()
    FUNCTION = "execute"
    OUTPUT_NODE = True
    DESCRIPTION = "The output frame of the stream (or of this execution)."

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"images": ("IMAGE",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):  # noqa: N802
        return float("nan")

    def execute(self, images: torch.Tensor):
        require_context().output_frames.append(images)
        return ()
