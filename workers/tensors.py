"""The worker's two conversions between a shared-memory frame and ComfyUI's IMAGE tensor.

In: uint8 HxWx3 -> float32 [1,H,W,3] in 0..1, `x * (1/255)` (mul rather than div: a faster kernel,
and the same bytes once scaled back). Out: `255 * x + 0.5`, clamped to 0..255, truncated to uint8
(so it rounds), written straight into the output slot. torch is imported by the caller (the
worker pins the GPU first); these functions take it as an argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_INV_255 = np.float32(1.0 / 255.0)


def rgb_to_image(torch: Any, rgb: np.ndarray, device: Any = None) -> Any:
    """A new IMAGE tensor on `device` (nodes may keep their input, so never a reused buffer). On
    the CPU numpy casts and scales in one pass; elsewhere the uint8 bytes go over, then convert."""
    if device is not None and device.type != "cpu":
        src = torch.from_numpy(rgb).to(device, non_blocking=False)
        return src.to(torch.float32).mul_(1.0 / 255.0).unsqueeze_(0)
    out = torch.empty((1, *rgb.shape), dtype=torch.float32)
    np.multiply(rgb, _INV_255, out=out.numpy()[0])
    return out


def image_into_rgb(torch: Any, img: Any, dst: np.ndarray, scratch: Any = None) -> Any:
    """Write `img` ([H,W,3] float, 0..1) into `dst` (uint8 HxWx3). `scratch`: a float32 CPU
    tensor of img's shape to reuse (nodes never see it); returns the buffer used, to pass next time.
    numpy's float -> uint8 cast is about twice as fast as torch's copy_."""
    if img.device.type != "cpu":  # scaled on the device; a quarter of the bytes come back
        rounded = torch.add(0.5, img.float(), alpha=255.0).clamp_(0.0, 255.0).to(torch.uint8)
        torch.from_numpy(dst).copy_(rounded)
        return scratch
    if scratch is None or tuple(scratch.shape) != tuple(img.shape):
        scratch = torch.empty(tuple(img.shape), dtype=torch.float32)
    torch.add(0.5, img.float(), alpha=255.0, out=scratch).clamp_(0.0, 255.0)
    np.copyto(dst, scratch.numpy(), casting="unsafe")
    return scratch
