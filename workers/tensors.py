"""The worker's two conversions between a shared-memory frame and ComfyUI's IMAGE tensor.

In: uint8 HxWx3 -> float32 [1,H,W,3] in 0..1, `x * (1/255)` (mul rather than div: a faster kernel,
and the same bytes once scaled back). Out: `255 * x + 0.5`, clamped to 0..255, truncated to uint8
(so it rounds), written straight into the output slot. `FrameTransfer` is a channel's pair of
them: these functions on the CPU, one upload and one download per frame on a GPU. torch is
imported by the caller (the worker pins the GPU first); these take it as an argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_INV_255 = np.float32(1.0 / 255.0)


def rgb_to_image(torch: Any, rgb: np.ndarray) -> Any:
    """A new IMAGE tensor on the CPU (nodes may keep their input, so never a reused buffer):
    numpy casts and scales in one pass."""
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


class FrameTransfer:
    """One channel's frames between its shared-memory slots and the device its prompts run on.

    On the CPU (`staged` false) the two functions above, unchanged: numpy casts and scales in one
    pass in, and casts back in one pass out.

    On a GPU each frame crosses the bus once each way, and nothing else of it does:
      in   slot --memcpy--> pinned uint8 buffer --one non_blocking copy--> device uint8 buffer,
           then float and scale on the device (a quarter of the bytes cross, not float32);
      out  round, clamp and cast to uint8 on the device --one non_blocking copy--> pinned buffer,
           wait for that copy, --memcpy--> the output slot.
    The shared-memory slots are pageable memory: a copy from them is synchronous whatever
    non_blocking says (CUDA stages it through a pinned buffer of its own), so the frame goes
    through our pinned buffer instead, and the upload overlaps the host work that follows it.
    The buffers are the channel's, reused every frame; the input buffer is rewritten only once
    the previous upload from it is done (an event), and the output slot is written only once the
    download is done.

    `staged`/`pin` default from `device`; a test runs the staged path on the CPU with
    `staged=True, pin=False` (then the copies are plain host copies and there are no events).
    """

    def __init__(self, torch: Any, device: Any, staged: bool | None = None, pin: bool | None = None):
        self.torch = torch
        self.device = device
        self.staged = device.type != "cpu" if staged is None else staged
        self.pin = device.type == "cuda" if pin is None else pin
        self._host_in: Any = None  # pinned uint8 HxWx3: the slot's bytes on their way up
        self._dev_in: Any = None  # uint8 HxWx3 on the device: where they land
        self._host_out: Any = None  # pinned uint8 HxWx3: the result on its way down
        self._uploaded: Any = None  # event: the last upload has read _host_in
        self._scratch: Any = None  # the CPU path's float buffer (image_into_rgb)

    def _buffer(self, current: Any, shape: tuple[int, ...], device: Any = None) -> Any:
        if current is not None and tuple(current.shape) == shape:
            return current
        if device is not None:
            return self.torch.empty(shape, dtype=self.torch.uint8, device=device)
        return self.torch.empty(shape, dtype=self.torch.uint8, pin_memory=self.pin)

    def _record(self) -> Any:
        """An event after the work queued so far on the device's current stream (None on the CPU)."""
        if self.device.type != "cuda":
            return None
        event = self.torch.cuda.Event()
        event.record()
        return event

    def upload(self, rgb: np.ndarray) -> Any:
        """A new IMAGE tensor [1,H,W,3] float32 0..1 on the device (nodes may keep it)."""
        if not self.staged:
            return rgb_to_image(self.torch, rgb)
        shape = tuple(rgb.shape)
        self._host_in = self._buffer(self._host_in, shape)
        self._dev_in = self._buffer(self._dev_in, shape, self.device)
        if self._uploaded is not None:
            self._uploaded.synchronize()  # the previous frame's copy has left the buffer
        np.copyto(self._host_in.numpy(), rgb)
        self._dev_in.copy_(self._host_in, non_blocking=True)  # the one host -> device copy
        self._uploaded = self._record()
        # A new tensor: the uint8 buffer is reused next frame, and stream order keeps this
        # conversion ahead of the next copy into it.
        return self._dev_in.to(self.torch.float32).mul_(1.0 / 255.0).unsqueeze_(0)

    def download(self, img: Any, dst: np.ndarray) -> None:
        """Write `img` ([H,W,3] float 0..1, any device) into `dst` (uint8 HxWx3, the output slot)."""
        torch = self.torch
        if not (self.staged and img.device.type == self.device.type):
            # On the CPU (or a result a node left on the CPU): numpy's cast, as before.
            self._scratch = image_into_rgb(torch, img, dst, self._scratch)
            return
        rounded = torch.add(0.5, img.float(), alpha=255.0).clamp_(0.0, 255.0).to(torch.uint8)
        self._host_out = self._buffer(self._host_out, tuple(rounded.shape))
        self._host_out.copy_(rounded, non_blocking=True)  # the one device -> host copy
        done = self._record()
        if done is not None:
            done.synchronize()  # the bytes are in host memory before they are read
        np.copyto(dst, self._host_out.numpy())


def device_memory(torch: Any, device: Any) -> dict[str, float] | None:
    """What torch's allocator holds on `device` in this process, in MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    mib = 1024.0 * 1024.0
    try:
        return {
            "allocated_mib": round(torch.cuda.memory_allocated(device) / mib, 1),
            "reserved_mib": round(torch.cuda.memory_reserved(device) / mib, 1),
            "max_reserved_mib": round(torch.cuda.max_memory_reserved(device) / mib, 1),
        }
    except RuntimeError:  # an allocator backend without these statistics
        return None
