"""Shared-memory frame ring: fixed slots of uint8 RGB frames between the server and a worker.

One POSIX shared-memory segment per stream channel, laid out as ``slots`` pairs of regions:
slot ``i`` has an input region (the server writes the frame, the worker reads it) and an output
region (the worker writes the result, the server reads it). A slot is owned by exactly one side
at a time, and ownership moves with the small messages on the control pipe (the slot index and
the frame id), so the ring itself needs no flags or locks.

The server process creates and unlinks every segment; a worker only attaches. (vLLM's
shared-memory broadcast queue keeps ownership the same way; it signals through flags in shared
memory with spinning readers, which would burn one of our two cores, so we signal over the pipe.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "comfystream-ring-"


class RingError(RuntimeError):
    """A slot was used out of turn, or a frame does not fit the ring."""


def frame_bytes(width: int, height: int) -> int:
    return width * height * 3


@contextlib.contextmanager
def _untracked() -> Iterator[None]:
    """Attach without registering with the resource tracker (Python < 3.13 registers every attach).

    A spawned worker shares its parent's tracker; a late registration from the worker could
    outlive the parent's unlink and make the tracker report (and try to remove) a segment that
    is already gone. The parent, which owns the segment, is the only one that tracks it.
    """
    original = resource_tracker.register

    def _skip_shared_memory(name: str, rtype: str) -> None:
        if rtype != "shared_memory":
            original(name, rtype)

    resource_tracker.register = _skip_shared_memory
    try:
        yield
    finally:
        resource_tracker.register = original


class FrameRing:
    """``slots`` input/output frame regions of ``width x height`` RGB in one shared segment."""

    def __init__(self, shm: SharedMemory, slots: int, width: int, height: int, owner: bool):
        if slots < 1 or width < 1 or height < 1:
            raise RingError(f"bad ring geometry: {slots} slots of {width}x{height}")
        self.shm = shm
        self.slots = slots
        self.width = width
        self.height = height
        self.owner = owner
        self.frame_bytes = frame_bytes(width, height)
        if shm.size < 2 * slots * self.frame_bytes:
            raise RingError(f"segment {shm.name} is {shm.size} bytes, too small for {slots} slots")
        whole = np.ndarray((slots, 2, height, width, 3), dtype=np.uint8, buffer=shm.buf)
        self._inputs = [whole[i, 0] for i in range(slots)]
        self._outputs = [whole[i, 1] for i in range(slots)]
        self._flat_outputs = [whole[i, 1].reshape(-1) for i in range(slots)]
        self._free = list(range(slots - 1, -1, -1))  # parent side only: slots not lent out
        self._closed = False

    # -- creation ----------------------------------------------------------------------------

    @classmethod
    def create(cls, slots: int, width: int, height: int) -> FrameRing:
        """A new segment owned by this process (`close()` unlinks it)."""
        if slots < 1 or width < 1 or height < 1:
            raise RingError(f"bad ring geometry: {slots} slots of {width}x{height}")
        size = 2 * slots * frame_bytes(width, height)
        name = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        shm = SharedMemory(name=name, create=True, size=size)
        logger.debug("ring %s created: %d slots of %dx%d", name, slots, width, height)
        try:
            return cls(shm, slots, width, height, owner=True)
        except BaseException:
            shm.close()
            shm.unlink()
            raise

    @classmethod
    def attach(cls, name: str, slots: int, width: int, height: int) -> FrameRing:
        """The worker's view of a segment the server created."""
        if sys.version_info >= (3, 13):
            shm = SharedMemory(name=name, track=False)
        else:
            with _untracked():
                shm = SharedMemory(name=name)
        try:
            return cls(shm, slots, width, height, owner=False)
        except BaseException:
            shm.close()
            raise

    @property
    def name(self) -> str:
        return self.shm.name

    # -- slot ownership (parent side) ----------------------------------------------------------

    def free_slots(self) -> int:
        return len(self._free)

    def acquire(self) -> int | None:
        """A free slot index for the next frame, or None when all are lent to the worker."""
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.slots or slot in self._free:
            raise RingError(f"slot {slot} released twice or out of range")
        self._free.append(slot)

    def release_all(self) -> None:
        """Every slot back to the server (the worker that held them is gone)."""
        self._free = list(range(self.slots - 1, -1, -1))

    # -- data ----------------------------------------------------------------------------------

    def input(self, slot: int) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 input region of ``slot`` (a view into shared memory)."""
        return self._inputs[slot]

    def output(self, slot: int, shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """The output region of ``slot``; ``shape`` when the worker wrote a smaller image."""
        if shape is None or tuple(shape) == (self.height, self.width, 3):
            return self._outputs[slot]
        h, w, c = shape
        if c != 3 or h * w * c > self.frame_bytes:
            raise RingError(f"output shape {shape} does not fit a {self.width}x{self.height} slot")
        return self._flat_outputs[slot][: h * w * c].reshape(h, w, c)

    def write_input(self, slot: int, rgb: np.ndarray) -> None:
        if rgb.shape != (self.height, self.width, 3):
            raise RingError(f"frame {rgb.shape} does not match the ring's {self.height}x{self.width}x3")
        np.copyto(self._inputs[slot], rgb, casting="no")

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Drop this process's mapping; the owner also unlinks the segment."""
        if self._closed:
            return
        self._closed = True
        self._inputs = self._outputs = self._flat_outputs = []
        try:
            self.shm.close()
        except BufferError:
            # A view is still exported somewhere: unlink anyway so the name goes, the mapping
            # goes with the last reference.
            logger.warning("ring %s closed while a view of it was still alive", self.name)
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()
            logger.debug("ring %s unlinked", self.name)

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
