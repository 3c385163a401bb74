"""Tensor helpers with ComfyUI's semantics (`comfy.utils.common_upscale`, `repeat_to_batch_size`,
`node_helpers.image_alpha_fix`), so nodes built on them give ComfyUI's pixels.

torch is imported where it is used: the server imports the nodes built on these for their
definitions and never computes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Per-image PIL Lanczos through 8 bits, as ComfyUI does ([B,C,H,W] in and out)."""
    import torch

    images = [
        Image.fromarray(np.clip(255.0 * image.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8))
        for image in samples
    ]
    images = [image.resize((width, height), resample=Image.Resampling.LANCZOS) for image in images]
    tensors = [
        torch.from_numpy(np.array(image).astype(np.float32) / 255.0).movedim(-1, 0) for image in images
    ]
    return torch.stack(tensors).to(samples.device, samples.dtype)


def common_upscale(
    samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str
) -> torch.Tensor:
    """Resize `[B,C,H,W]` to (height, width); `crop="center"` first crops to the new aspect ratio."""
    import torch

    if crop == "center":
        old_width = samples.shape[-1]
        old_height = samples.shape[-2]
        old_aspect = old_width / old_height
        new_aspect = width / height
        x = 0
        y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        s = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    else:
        s = samples
    if upscale_method == "lanczos":
        return lanczos(s, width, height)
    return torch.nn.functional.interpolate(s, size=(height, width), mode=upscale_method)


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / tensor.shape[dim])
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make RGB and RGBA images combinable: drop the source's extra alpha, or give it an opaque one."""
    import torch

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = torch.nn.functional.pad(source, (0, 1))
        source[..., -1] = 1.0
    return destination, source


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """One `[H,W,C]` image to 8 bits exactly as ComfyUI's SaveImage converts it."""
    i = 255.0 * image.cpu().numpy()
    return np.clip(i, 0, 255).astype(np.uint8)
