"""av.VideoFrame <-> RGB arrays and IMAGE tensors, with exactly one colour conversion each way.

Decoded frames are yuv420p; ``frame.reformat(w, h, format="rgb24")`` scales and converts them
in a single swscale pass. A centre crop (to keep the aspect ratio) is a slice of that RGB array,
not a second pass. The way back builds an ``rgb24`` frame; the encoder's one reformat to yuv420p
is the only conversion on that side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:
    import torch

# swscale's threads for every conversion of a frame. Its default (one per core) starts and joins a
# thread pool inside every `reformat`, as each frame gets its own scaler: 0.45 ms a frame at
# 128x128 against 0.02 ms on the calling thread, 0.47 against 0.17 ms at 512x512 (bench/media.py),
# and a frame that outlives its stream keeps its pool's threads. Streams already run in parallel.
SWS_THREADS = 1


def _cover_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """The smallest size with the source's aspect ratio that covers ``width x height``."""
    scale = max(width / src_w, height / src_h)
    return max(width, math.ceil(src_w * scale - 1e-6)), max(height, math.ceil(src_h * scale - 1e-6))


def frame_to_ndarray(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB: the frame scaled to cover the size, then centre-cropped."""
    width = width or frame.width
    height = height or frame.height
    if width <= 0 or height <= 0:
        raise ValueError(f"bad target size {width}x{height}")
    sw, sh = _cover_size(frame.width, frame.height, width, height)
    rgb = frame.reformat(width=sw, height=sh, format="rgb24", threads=SWS_THREADS).to_ndarray()
    if (sw, sh) != (width, height):
        x0, y0 = (sw - width) // 2, (sh - height) // 2
        rgb = np.ascontiguousarray(rgb[y0 : y0 + height, x0 : x0 + width])
    return rgb


def ndarray_to_frame(rgb: np.ndarray, template: av.VideoFrame | None = None) -> av.VideoFrame:
    """An ``rgb24`` frame from ``(H, W, 3)`` uint8, with ``pts``/``time_base`` of ``template``.

    One copy straight into the frame's plane (about 4x faster than ``VideoFrame.from_ndarray``
    at 512x512); ``rgb`` is read only during the call, so it may be a view into shared memory
    that is reused right after. A template with a pts and no time_base gives exactly that.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
    height, width, _ = arr.shape
    frame = av.VideoFrame(width, height, "rgb24")
    plane = frame.planes[0]
    dst = np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, : width * 3]
    np.copyto(dst.reshape(height, width, 3), arr)
    if template is not None:
        frame.pts = template.pts
        if template.time_base is not None:  # PyAV refuses None
            frame.time_base = template.time_base
    return frame


def frame_to_tensor(
    frame: av.VideoFrame, width: int | None = None, height: int | None = None
) -> torch.Tensor:
    """``[1, H, W, 3]`` float32 in 0..1 (ComfyUI's IMAGE) at ``width x height``."""
    import torch

    rgb = frame_to_ndarray(frame, width, height)
    return torch.from_numpy(rgb).to(torch.float32).div_(255.0).unsqueeze_(0)


def tensor_to_frame(tensor: torch.Tensor, template: av.VideoFrame | None = None) -> av.VideoFrame:
    """An ``rgb24`` frame from an IMAGE tensor (``[1,H,W,3]`` or ``[H,W,3]``, 0..1)."""
    import torch

    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got shape {tuple(t.shape)}")
        t = t[0]
    if t.dim() != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an image tensor [1,H,W,3], got shape {tuple(tensor.shape)}")
    rgb = t.to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).add_(0.5).to(torch.uint8).numpy()
    return ndarray_to_frame(rgb, template)
