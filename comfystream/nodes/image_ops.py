"""Image nodes from ComfyUI's core `nodes.py`, with ComfyUI's input names, defaults, ranges and results."""

from __future__ import annotations

import torch


class ImageInvert:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",)}}

    def invert(self, image: torch.Tensor):
        return (1.0 - image,)
